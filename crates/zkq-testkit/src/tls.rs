//! Certificates for TLS tests, made fresh by each test: a certificate authority, a server
//! certificate for `localhost` and `127.0.0.1`, and a client certificate, all signed by the CA.

use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// PEM certificates and keys made for one test.
#[derive(Clone)]
pub struct TestCerts {
    pub ca: String,
    pub server_cert: String,
    pub server_key: String,
    pub client_cert: String,
    pub client_key: String,
}

impl std::fmt::Debug for TestCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestCerts")
    }
}

impl TestCerts {
    /// A new CA named `name`, and a server and a client certificate it signed.
    pub fn generate(name: &str) -> Result<TestCerts, String> {
        let err = |e: rcgen::Error| format!("cannot make test certificates: {e}");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let ca_key = KeyPair::generate().map_err(err)?;
        let ca = ca_params.self_signed(&ca_key).map_err(err)?;
        let leaf = |cn: &str, names: Vec<String>| -> Result<(String, String), String> {
            let mut params = CertificateParams::new(names).map_err(err)?;
            params.distinguished_name.push(DnType::CommonName, cn);
            let key = KeyPair::generate().map_err(err)?;
            let cert = params.signed_by(&key, &ca, &ca_key).map_err(err)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let (server_cert, server_key) = leaf("zookeeper", vec!["localhost".into(), "127.0.0.1".into()])?;
        let (client_cert, client_key) = leaf(&format!("{name}-client"), vec![format!("{name}-client")])?;
        Ok(TestCerts {
            ca: ca.pem(),
            server_cert,
            server_key,
            client_cert,
            client_key,
        })
    }

    /// Writes the server's key store (key and certificate in one PEM) and trust store (the CA)
    /// into `dir`, for ZooKeeper's `ssl.keyStore` and `ssl.trustStore` of type PEM.
    pub(crate) fn write_server_stores(
        &self,
        dir: &Path,
    ) -> std::io::Result<(std::path::PathBuf, std::path::PathBuf)> {
        let key_store = dir.join("server-keystore.pem");
        let trust_store = dir.join("truststore.pem");
        std::fs::write(&key_store, format!("{}{}", self.server_key, self.server_cert))?;
        std::fs::write(&trust_store, &self.ca)?;
        Ok((key_store, trust_store))
    }
}
