//! A cluster's certificates: one CA, and a certificate per node (each leaf,
//! the aggregator, the client) signed by it. Every QUIC connection checks
//! both sides against the CA, so a peer without a CA-signed certificate is
//! refused.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use scuba_leaf::net::SERVER_NAME;

use crate::error::{AggError, Result};

fn certs_err(e: impl std::fmt::Display) -> AggError {
    AggError::Certs(e.to_string())
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

fn ca_params() -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(certs_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "scuba cluster CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// Writes `ca.pem`, `ca.key` and `<name>.pem`/`<name>.key` for each node
/// into `dir`; an existing CA is reused so nodes can be added later.
pub fn generate(dir: &Path, nodes: &[String]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let ca_key_path = dir.join("ca.key");
    let ca_cert_path = dir.join("ca.pem");
    // The CA's parameters are fixed, so an existing CA key signs new node
    // certificates that chain to the CA certificate written earlier.
    let ca_key = if ca_key_path.exists() && ca_cert_path.exists() {
        KeyPair::from_pem(&std::fs::read_to_string(&ca_key_path)?).map_err(certs_err)?
    } else {
        let key = KeyPair::generate().map_err(certs_err)?;
        let cert = ca_params()?.self_signed(&key).map_err(certs_err)?;
        std::fs::write(&ca_cert_path, cert.pem())?;
        write_private(&ca_key_path, &key.serialize_pem())?;
        key
    };
    let ca_params = ca_params()?;
    let issuer = Issuer::new(ca_params, ca_key);
    for node in nodes {
        let cert_path = dir.join(format!("{node}.pem"));
        if cert_path.exists() {
            continue;
        }
        let key = KeyPair::generate().map_err(certs_err)?;
        let mut params =
            CertificateParams::new(vec![SERVER_NAME.to_string(), "localhost".to_string()])
                .map_err(certs_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node.as_str());
        params.distinguished_name = dn;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&key, &issuer).map_err(certs_err)?;
        std::fs::write(&cert_path, cert.pem())?;
        write_private(&dir.join(format!("{node}.key")), &key.serialize_pem())?;
    }
    Ok(())
}
