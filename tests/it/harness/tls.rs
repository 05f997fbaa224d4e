//! A throwaway certificate authority for TLS upstreams: a CA certificate, server
//! certificates for `127.0.0.1` and signing certificates (the token server's), all
//! generated in-process with rcgen. Nothing touches the system trust store.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// A certificate issued by a [`TestCa`] with its private key.
pub struct Leaf {
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    pub key: KeyPair,
}

impl TestCa {
    /// A fresh CA (new ECDSA P-256 key every time, so two CAs never trust each
    /// other's certificates) with `name` as its common name.
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("generate CA key");
        let cert = params.self_signed(&key).expect("self-sign CA");
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// Write the CA certificate (PEM, what a client must trust) to `path` and return it.
    pub fn write_pem(&self, path: &Path) -> PathBuf {
        std::fs::write(path, &self.pem).expect("write CA PEM");
        path.to_path_buf()
    }

    /// A TLS server certificate for the IP address or DNS name `san`.
    pub fn server_cert(&self, san: &str) -> Leaf {
        let mut params = CertificateParams::new(vec![san.to_string()]).expect("server params");
        params.distinguished_name.push(DnType::CommonName, san);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A certificate whose key signs something other than TLS (token JWTs).
    pub fn signing_cert(&self, name: &str) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("signer params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.issue(params)
    }

    fn issue(&self, mut params: CertificateParams) -> Leaf {
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("generate leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Leaf {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key,
        }
    }
}

impl Leaf {
    /// Write `<dir>/<stem>.pem` (certificate) and `<dir>/<stem>-key.pem` (PKCS#8
    /// key), the pair docker-registry's `http.tls` takes; returns their paths.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}-key.pem"));
        std::fs::write(&cert, &self.cert_pem).expect("write certificate");
        std::fs::write(&key, self.key.serialize_pem()).expect("write key");
        (cert, key)
    }
}
