//! Certificates for TLS tests: a certificate authority and the server certificates it signs.

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{BasicConstraints, KeyUsage, SubjectAlternativeName};
use openssl::x509::{X509, X509NameBuilder};

/// A certificate and its key.
pub struct Issued {
    /// The certificate.
    pub cert: X509,
    /// Its private key.
    pub key: PKey<Private>,
}

/// A certificate for `cn`, signed by `issuer` (self-signed without one); a CA if `ca`,
/// otherwise a server certificate for the DNS names `dns` and IP addresses `ips`.
pub fn issue(cn: &str, issuer: Option<&Issued>, ca: bool, dns: &[&str], ips: &[&str]) -> Issued {
    let key = PKey::from_rsa(Rsa::generate(2048).expect("rsa")).expect("key");
    let mut name = X509NameBuilder::new().expect("name");
    name.append_entry_by_text("CN", cn).expect("cn");
    let name = name.build();
    let mut builder = X509::builder().expect("builder");
    builder.set_version(2).expect("version");
    let mut serial = BigNum::new().expect("bn");
    serial.rand(64, MsbOption::MAYBE_ZERO, false).expect("rand");
    builder
        .set_serial_number(&serial.to_asn1_integer().expect("serial"))
        .expect("serial");
    builder.set_subject_name(&name).expect("subject");
    builder
        .set_issuer_name(issuer.map_or(&name, |i| i.cert.subject_name()))
        .expect("issuer");
    builder.set_pubkey(&key).expect("pubkey");
    builder
        .set_not_before(&Asn1Time::days_from_now(0).expect("time"))
        .expect("not before");
    builder
        .set_not_after(&Asn1Time::days_from_now(30).expect("time"))
        .expect("not after");
    if ca {
        let constraints = BasicConstraints::new().critical().ca().build().expect("bc");
        builder.append_extension(constraints).expect("bc");
        let usage = KeyUsage::new()
            .key_cert_sign()
            .crl_sign()
            .build()
            .expect("ku");
        builder.append_extension(usage).expect("ku");
    } else {
        let mut san = SubjectAlternativeName::new();
        for name in dns {
            san.dns(name);
        }
        for ip in ips {
            san.ip(ip);
        }
        let context = builder.x509v3_context(issuer.map(|i| i.cert.as_ref()), None);
        let san = san.build(&context).expect("san");
        builder.append_extension(san).expect("san");
    }
    let signer = issuer.map_or(&key, |i| &i.key);
    builder.sign(signer, MessageDigest::sha256()).expect("sign");
    Issued {
        cert: builder.build(),
        key,
    }
}
