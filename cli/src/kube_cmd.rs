//! `sluice crds`: the CRDs of Knative's kinds as Sluice serves them, derived from Sluice's model types.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

#[derive(Args, Debug)]
pub(crate) struct CrdsArgs {
    /// Write one file per CRD into this directory (as `deploy/crds/` holds them) instead of printing them all.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
}

pub(crate) fn crds(args: CrdsArgs) -> anyhow::Result<()> {
    let crds = sluice_kubernetes::crd::crds();
    match args.out_dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for crd in &crds {
                let path = dir.join(sluice_kubernetes::crd::crd_file_name(crd));
                let yaml = sluice_kubernetes::crd::crd_yaml(crd)?;
                std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
                outln!("{}", path.display())?;
            }
        }
        None => {
            for (i, crd) in crds.iter().enumerate() {
                if i > 0 {
                    outln!("---")?;
                }
                out!("{}", sluice_kubernetes::crd::crd_yaml(crd)?)?;
            }
        }
    }
    Ok(())
}
