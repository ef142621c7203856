//! What a local instance gets of its node's environment. In: the node's variables, read once when the runtime
//! starts, and the names the operator adds (`--instance-env`). Out: the variables every instance (and its exec
//! probes) starts with, beneath its container's `env` and Knative's own (`PORT`, `K_SERVICE`, ...), which win.
//!
//! A container starts with its image's environment, never with the kubelet's. The node's environment is the
//! operator's (cloud credentials, `SLUICE_*` tokens, whatever the shell that started the node held), so an
//! instance gets only what a base image would set: a search path for programs, a home, the user, a locale, a
//! time zone, a temporary directory. Before session 61 it got all of it.

use std::ffi::OsString;

/// The node's variables every local instance gets, when the node has them.
pub(crate) const INHERITED_BY_DEFAULT: &[&str] =
    &["PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR"];

/// The variables of `node_env` named in [`INHERITED_BY_DEFAULT`] or in `extra_names`, in the node's order. A
/// value that is not UTF-8 is left out (and logged): the runtime expands `$(VAR)` references in text.
pub(crate) fn inherited(
    node_env: impl IntoIterator<Item = (OsString, OsString)>,
    extra_names: &[String],
) -> Vec<(String, String)> {
    let wanted = |name: &str| INHERITED_BY_DEFAULT.contains(&name) || extra_names.iter().any(|n| n == name);
    node_env
        .into_iter()
        .filter_map(|(name, value)| {
            let name = name.into_string().ok()?;
            if !wanted(&name) {
                return None;
            }
            match value.into_string() {
                Ok(value) => Some((name, value)),
                Err(_) => {
                    tracing::warn!(variable = %name, "not given to local instances: its value is not UTF-8");
                    None
                }
            }
        })
        .collect()
}

/// Whether `name` can be an `--instance-env` name: a variable name a shell and Kubernetes accept (letters,
/// digits, `_`, `-`, `.`; not starting with a digit).
pub fn valid_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    match chars.next() {
        None => Err("an empty variable name".into()),
        Some(first) if first.is_ascii_digit() => Err(format!("{name:?}: a variable name cannot start with a digit")),
        Some(_) if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) => {
            Err(format!("{name:?}: a variable name has only letters, digits, '_', '-' and '.'"))
        }
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(vars: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        vars.iter().map(|(k, v)| (OsString::from(k), OsString::from(v))).collect()
    }

    #[test]
    fn only_what_a_base_image_sets_and_the_operators_names_pass() {
        let env = node(&[
            ("PATH", "/usr/bin"),
            ("AWS_SECRET_ACCESS_KEY", "s3cr3t"),
            ("HOME", "/root"),
            ("SLUICE_ADMIN_TOKEN", "t"),
            ("LANG", "C.UTF-8"),
            ("PYTHONPATH", "/opt/lib"),
        ]);
        type Vars<'a> = &'a [(&'a str, &'a str)];
        let cases: &[(&[&str], Vars)] = &[
            (&[], &[("PATH", "/usr/bin"), ("HOME", "/root"), ("LANG", "C.UTF-8")]),
            (
                &["PYTHONPATH"],
                &[("PATH", "/usr/bin"), ("HOME", "/root"), ("LANG", "C.UTF-8"), ("PYTHONPATH", "/opt/lib")],
            ),
            (&["NOT_SET"], &[("PATH", "/usr/bin"), ("HOME", "/root"), ("LANG", "C.UTF-8")]),
        ];
        for (extra, expected) in cases {
            let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
            let got = inherited(env.clone(), &extra);
            let expected: Vec<(String, String)> =
                expected.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            assert_eq!(got, expected, "extra names {extra:?}");
        }
    }

    #[test]
    fn a_value_that_is_not_utf8_is_left_out() {
        use std::os::unix::ffi::OsStringExt;
        let env = vec![
            (OsString::from("PATH"), OsString::from_vec(vec![b'/', 0xff])),
            (OsString::from("HOME"), OsString::from("/root")),
        ];
        assert_eq!(inherited(env, &[]), vec![("HOME".to_string(), "/root".to_string())]);
    }

    #[test]
    fn variable_names() {
        for good in ["PYTHONPATH", "VIRTUAL_ENV", "a.b-c", "_X1"] {
            assert_eq!(valid_name(good), Ok(()), "{good}");
        }
        for bad in ["", "1X", "A=B", "A B", "É"] {
            assert!(valid_name(bad).is_err(), "{bad:?}");
        }
    }
}
