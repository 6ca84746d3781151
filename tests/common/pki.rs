//! A test PKI (rcgen): a CA, and certificates signed by it, for SIP over TLS and for TLS to
//! the cluster's database.

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate and its key, as DER (for rustls) and PEM (for files).
pub(crate) struct Leaf {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
}

pub(crate) fn ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let issued = rcgen::KeyPair::generate().and_then(|key| {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        rcgen::CertifiedIssuer::self_signed(params, key)
    });
    match issued {
        Ok(ca) => ca,
        Err(e) => panic!("{e}"),
    }
}

pub(crate) fn leaf(issuer: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>) -> Leaf {
    leaf_for(issuer, "127.0.0.1")
}

/// A certificate for `address` signed by `issuer`.
pub(crate) fn leaf_for(
    issuer: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    address: &str,
) -> Leaf {
    let made = rcgen::KeyPair::generate().and_then(|key| {
        let mut params = rcgen::CertificateParams::new(vec![address.to_string()])?;
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, issuer)?;
        Ok((cert, key))
    });
    let (cert, key) = match made {
        Ok(made) => made,
        Err(e) => panic!("{e}"),
    };
    let key_der = match PrivateKeyDer::try_from(key.serialize_der()) {
        Ok(k) => k,
        Err(e) => panic!("{e}"),
    };
    Leaf {
        chain: vec![cert.der().clone()],
        key: key_der,
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}
