use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::dev_certs::{DevCertificates, issue_certificate};
use crate::tls::accept::{ClientCertificate, PlaintextPolicy, Transport, accept};

fn localhost() -> Vec<String> {
    vec!["localhost".to_string(), "127.0.0.1".to_string()]
}

/// Writes a CA and a certificate it signs into `dir`.
fn write_files(dir: &Path, ca: &DevCertificates) -> TlsFiles {
    let (cert, key) = issue_certificate(ca, &localhost()).expect("issue");
    let files = TlsFiles { cert: dir.join("node.pem"), key: dir.join("node.key"), ca: dir.join("ca.pem") };
    std::fs::write(&files.cert, cert).expect("write");
    std::fs::write(&files.key, key).expect("write");
    std::fs::write(&files.ca, &ca.ca_cert_pem).expect("write");
    files
}

fn load(files: &TlsFiles) -> Result<Tls, TlsError> {
    Tls::load(TransportEncryption::Strict, Some(files.clone())).map(|tls| tls.expect("TLS on"))
}

#[test]
fn modes_parse_and_say_what_they_allow() {
    for (text, mode, plaintext, tls) in [
        ("disabled", TransportEncryption::Disabled, true, false),
        ("permissive", TransportEncryption::Permissive, true, true),
        ("strict", TransportEncryption::Strict, false, true),
    ] {
        let parsed: TransportEncryption = text.parse().expect("parses");
        assert_eq!(parsed, mode);
        assert_eq!(parsed.to_string(), text);
        assert_eq!(parsed.accepts_plaintext(), plaintext, "{text}");
        assert_eq!(parsed.serves_tls(), tls, "{text}");
    }
    let error = "Strict".parse::<TransportEncryption>().expect_err("case matters");
    assert!(error.to_string().contains("disabled, permissive, strict"), "{error}");
}

#[test]
fn disabled_needs_no_files_and_the_others_do() {
    assert!(Tls::load(TransportEncryption::Disabled, None).expect("no files needed").is_none());
    let error = Tls::load(TransportEncryption::Permissive, None).expect_err("files needed");
    assert!(error.to_string().contains("--tls-cert, --tls-key and --tls-ca"), "{error}");
}

#[test]
fn bad_files_are_named_with_what_is_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = DevCertificates::new_ca("test CA").expect("CA");
    let files = write_files(dir.path(), &ca);
    assert!(load(&files).is_ok());

    let missing = TlsFiles { cert: dir.path().join("nope.pem"), ..files.clone() };
    let error = load(&missing).expect_err("missing file").to_string();
    assert!(error.starts_with("cannot read --tls-cert") && error.contains("nope.pem"), "{error}");

    std::fs::write(dir.path().join("empty.pem"), "").expect("write");
    let empty = TlsFiles { cert: dir.path().join("empty.pem"), ..files.clone() };
    let error = load(&empty).expect_err("no certificate").to_string();
    assert!(error.contains("holds no PEM certificate"), "{error}");

    let no_key = TlsFiles { key: files.cert.clone(), ..files.clone() };
    let error = load(&no_key).expect_err("no key").to_string();
    assert!(error.contains("holds no private key"), "{error}");

    // The key of another certificate.
    let (_, other_key) = issue_certificate(&ca, &localhost()).expect("issue");
    std::fs::write(dir.path().join("other.key"), other_key).expect("write");
    let mismatched = TlsFiles { key: dir.path().join("other.key"), ..files.clone() };
    let error = load(&mismatched).expect_err("mismatch").to_string();
    assert!(error.contains("is not the key of the certificate"), "{error}");

    std::fs::write(
        dir.path().join("garbled.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    let garbled = TlsFiles { ca: dir.path().join("garbled.pem"), ..files };
    let error = load(&garbled).expect_err("garbled CA").to_string();
    assert!(error.contains("--tls-ca") && error.contains("garbled.pem"), "{error}");
}

#[test]
fn reload_swaps_only_for_files_that_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = DevCertificates::new_ca("test CA").expect("CA");
    let files = write_files(dir.path(), &ca);
    let tls = load(&files).expect("loads");
    assert_eq!(tls.reload(), Reload::Unchanged);
    let first = tls.server_config();

    // A half-written rotation: the new certificate, the old key.
    let (cert, key) = issue_certificate(&ca, &localhost()).expect("issue");
    std::fs::write(&files.cert, &cert).expect("write");
    assert!(matches!(tls.reload(), Reload::Failed(reason) if reason.contains("is not the key")));
    assert!(Arc::ptr_eq(&first, &tls.server_config()), "the old config stays");

    std::fs::write(&files.key, &key).expect("write");
    assert_eq!(tls.reload(), Reload::Reloaded);
    assert!(!Arc::ptr_eq(&first, &tls.server_config()));
    assert_eq!(tls.reload(), Reload::Unchanged);
}

/// A TLS client that trusts `ca` and presents a certificate of it.
fn client_config(dir: &Path, ca: &DevCertificates) -> Arc<rustls::ClientConfig> {
    let files = write_files(dir, ca);
    load(&files).expect("loads").client_config()
}

async fn serve_once(
    tls: Tls,
    plaintext: PlaintextPolicy,
    client_certificate: ClientCertificate,
) -> (String, tokio::task::JoinHandle<Result<Transport, String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut conn = accept(stream, Some(&tls), plaintext, client_certificate, Duration::from_secs(5))
            .await
            .map_err(|e| e.to_string())?;
        let transport = conn.info().transport;
        let mut byte = [0u8; 1];
        conn.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
        conn.write_all(&byte).await.map_err(|e| e.to_string())?;
        conn.flush().await.map_err(|e| e.to_string())?;
        Ok(transport)
    });
    (addr, task)
}

async fn echo_over_tls(addr: &str, config: Arc<rustls::ClientConfig>) -> Result<(), String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let mut stream = tokio_rustls::TlsConnector::from(config).connect(name, stream).await.map_err(|e| e.to_string())?;
    stream.write_all(b"x").await.map_err(|e| e.to_string())?;
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
    Ok(())
}

#[tokio::test]
async fn one_port_sorts_plaintext_from_tls_by_mode() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = DevCertificates::new_ca("cluster CA").expect("CA");
    let tls = load(&write_files(dir.path(), &ca)).expect("loads");
    let client_dir = tempfile::tempdir().expect("tempdir");
    let trusted_client = client_config(client_dir.path(), &ca);

    // TLS, plaintext allowed: TLS still works.
    let (addr, server) = serve_once(tls.clone(), PlaintextPolicy::Accept, ClientCertificate::Optional).await;
    echo_over_tls(&addr, trusted_client.clone()).await.expect("TLS echo");
    assert_eq!(server.await.expect("join"), Ok(Transport::Tls));

    // Plaintext, allowed.
    let (addr, server) = serve_once(tls.clone(), PlaintextPolicy::Accept, ClientCertificate::Optional).await;
    let mut plain = TcpStream::connect(&addr).await.expect("connect");
    plain.write_all(b"G").await.expect("write");
    let mut byte = [0u8; 1];
    plain.read_exact(&mut byte).await.expect("echo");
    assert_eq!(server.await.expect("join"), Ok(Transport::Plain));

    // Plaintext, refused.
    let (addr, server) = serve_once(tls.clone(), PlaintextPolicy::Refuse, ClientCertificate::Optional).await;
    let mut plain = TcpStream::connect(&addr).await.expect("connect");
    plain.write_all(b"G").await.expect("write");
    let refused = server.await.expect("join").expect_err("refused");
    assert!(refused.contains("plaintext refused"), "{refused}");
}

#[tokio::test]
async fn mutual_tls_refuses_a_client_of_another_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = DevCertificates::new_ca("cluster CA").expect("CA");
    let tls = load(&write_files(dir.path(), &ca)).expect("loads");

    let stranger_dir = tempfile::tempdir().expect("tempdir");
    let stranger_ca = DevCertificates::new_ca("another CA").expect("CA");
    // Trusts our CA (so it gets as far as presenting its certificate) but holds one of another CA.
    let stranger = {
        let files = write_files(stranger_dir.path(), &stranger_ca);
        std::fs::write(&files.ca, &ca.ca_cert_pem).expect("write");
        load(&files).expect("loads").client_config()
    };
    let (addr, server) = serve_once(tls.clone(), PlaintextPolicy::Refuse, ClientCertificate::Required).await;
    let _ = echo_over_tls(&addr, stranger).await;
    let refused = server.await.expect("join").expect_err("refused");
    assert!(refused.contains("handshake"), "{refused}");

    let member_dir = tempfile::tempdir().expect("tempdir");
    let member = client_config(member_dir.path(), &ca);
    let (addr, server) = serve_once(tls.clone(), PlaintextPolicy::Refuse, ClientCertificate::Required).await;
    echo_over_tls(&addr, member).await.expect("a member's certificate is accepted");
    assert_eq!(server.await.expect("join"), Ok(Transport::Tls));
}

/// Regression: a node dialing a node checked the CA and the name only. With a CA shared with other workloads, a
/// certificate of that CA for a node's name, held by something that is not a node, was taken for the node (and
/// would get its Raft traffic). The server's certificate must now carry the organisation `sluice:node`.
#[tokio::test]
async fn a_node_dials_only_servers_whose_certificate_is_a_nodes() {
    use rcgen::{CertificateParams, DnType, Issuer, KeyPair};
    let ca = DevCertificates::new_ca("a CA shared with other workloads").expect("CA");
    let workload_dir = tempfile::tempdir().expect("tempdir");
    let workload = {
        let files = write_files(workload_dir.path(), &ca);
        let issuer = Issuer::from_ca_cert_pem(&ca.ca_cert_pem, KeyPair::from_pem(&ca.ca_key_pem).expect("CA key"))
            .expect("issuer");
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(localhost()).expect("names");
        params.distinguished_name.push(DnType::OrganizationName, "payments");
        let cert = params.signed_by(&key, &issuer).expect("signed");
        std::fs::write(&files.cert, cert.pem()).expect("write");
        std::fs::write(&files.key, key.serialize_pem()).expect("write");
        Tls::load(TransportEncryption::Permissive, Some(files)).expect("loads").expect("TLS on")
    };
    let node_dir = tempfile::tempdir().expect("tempdir");
    let node = client_config(node_dir.path(), &ca);
    // The CLI with `--ca-cert` and a token, no certificate of its own: the same check (regression: it trusted
    // any certificate of the CA, and the system's CAs too, and sent its token there).
    let ca_path = node_dir.path().join("given-ca.pem");
    std::fs::write(&ca_path, &ca.ca_cert_pem).expect("write");
    let operator = crate::admin_client_config(&ca_path).expect("loads");

    for client in [node.clone(), operator.clone()] {
        let (addr, server) = serve_once(workload.clone(), PlaintextPolicy::Refuse, ClientCertificate::Optional).await;
        let refused = echo_over_tls(&addr, client).await.expect_err("not a node's certificate");
        assert!(refused.contains("not a Sluice node's"), "{refused}");
        let _ = server.await;
    }

    let member_dir = tempfile::tempdir().expect("tempdir");
    let member = load(&write_files(member_dir.path(), &ca)).expect("loads");
    for client in [node, operator] {
        let (addr, server) = serve_once(member.clone(), PlaintextPolicy::Refuse, ClientCertificate::Optional).await;
        echo_over_tls(&addr, client).await.expect("a node's certificate is taken");
        server.await.expect("join").expect("served");
    }
}
