//! DICOM TLS (PS3.15 B.9, the BCP 195 / RFC 9325 non-downgrading profile) for the SCP and the SCU,
//! with rustls and its `ring` crypto provider.
//!
//! Profile: TLS 1.2 and 1.3 only (rustls has no TLS 1.0/1.1 and no renegotiation), and only rustls's
//! default cipher suites, which are all ECDHE key exchange with AEAD ciphers (AES-GCM,
//! ChaCha20-Poly1305): no RSA key exchange, no CBC, no RC4/3DES, no NULL or anonymous suites; TLS 1.3
//! downgrade protection (the ServerHello random sentinel) is checked. There is no weaker fallback.
//!
//! Authentication: the SCP requires a client certificate signed by `server.tls.ca` by default
//! (`require_client_cert`), and with `allowed_subjects` admits only certificates whose subject is on
//! the list (in addition to `allowed_callers` by AE title and address). The SCU verifies the
//! destination's certificate against the destination's `ca` and its name against `server_name`
//! (default: `host`; an IP address is checked against the certificate's IP SANs).
//!
//! Private keys must be readable by the service user only: a key file with any group or other
//! permission bit fails `check-config` and start-up (there is no "warn only" mode).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{Destination, ServerTls, Settings};
use crate::util::dn::dn_parts;

/// Errors loading TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {path}: {reason}")]
    File {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {path}: cannot be read: {source}")]
    Unreadable {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {path}: {source}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("private key file {path}: no usable PEM private key: {source}")]
    PemKey {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{what} {path}: {source}")]
    Certificate {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("{context}: {reason}")]
    Config { context: String, reason: String },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS 1.3 and 1.2 (BCP 195: nothing older).
const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Fails when the private key file is missing, not a regular file, or has any group or other
/// permission bit (it must be readable by the service user only: mode 0600 or 0400).
pub fn check_key_file(path: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |reason: String| TlsError::File {
        what: "private key file",
        path: path.to_owned(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|source| TlsError::Io {
        what: "private key file",
        path: path.to_owned(),
        source,
    })?;
    if !meta.is_file() {
        return Err(err("not a regular file".into()));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(err(format!(
            "mode {mode:04o} gives access to group or others; make it readable by the service user only (chmod 600)"
        )));
    }
    crate::util::fs::open_regular(path).map_err(|source| TlsError::Unreadable {
        what: "private key file",
        path: path.to_owned(),
        source,
    })?;
    Ok(())
}

fn load_certs(what: &'static str, path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::File {
        what,
        path: PathBuf::from(path),
        reason,
    };
    let pem = |source| TlsError::Pem {
        what,
        path: PathBuf::from(path),
        source,
    };
    let file = crate::util::fs::open_regular(Path::new(path)).map_err(|source| TlsError::Io {
        what,
        path: PathBuf::from(path),
        source,
    })?;
    let certs = CertificateDer::pem_reader_iter(file)
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in it".into()));
    }
    Ok(certs)
}

fn load_key(path: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    check_key_file(Path::new(path))?;
    PrivateKeyDer::from_pem_file(path).map_err(|source| TlsError::PemKey {
        path: PathBuf::from(path),
        source,
    })
}

fn roots(what: &'static str, path: &str) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for c in load_certs(what, path)? {
        store.add(c).map_err(|source| TlsError::Certificate {
            what,
            path: PathBuf::from(path),
            source,
        })?;
    }
    Ok(store)
}

/// The SCP's rustls configuration (`[server.tls]`).
pub fn server_config(t: &ServerTls) -> Result<Arc<ServerConfig>, TlsError> {
    let cfg_err = |reason: String| TlsError::Config {
        context: "server.tls".into(),
        reason,
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| cfg_err(e.to_string()))?;
    let builder = if t.ca.trim().is_empty() {
        if t.require_client_cert {
            return Err(cfg_err(
                "require_client_cert = true needs ca (the CA that signs client certificates)"
                    .into(),
            ));
        }
        builder.with_no_client_auth()
    } else {
        let store = roots("CA certificate file", &t.ca)?;
        let v = WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider());
        let v = if t.require_client_cert {
            v
        } else {
            v.allow_unauthenticated()
        };
        builder.with_client_cert_verifier(v.build().map_err(|e| cfg_err(e.to_string()))?)
    };
    let certs = load_certs("certificate file", &t.cert)?;
    let key = load_key(&t.key)?;
    let cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| cfg_err(format!("certificate {} and key {}: {e}", t.cert, t.key)))?;
    Ok(Arc::new(cfg))
}

/// The rustls configuration for one destination with `tls = true`.
pub fn client_config(d: &Destination) -> Result<Arc<ClientConfig>, TlsError> {
    let cfg_err = |reason: String| TlsError::Config {
        context: format!("destination {}", d.name),
        reason,
    };
    let store = roots("CA certificate file", &d.ca)?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| cfg_err(e.to_string()))?
        .with_root_certificates(store);
    let cfg = if d.cert.trim().is_empty() {
        builder.with_no_client_auth()
    } else {
        let certs = load_certs("certificate file", &d.cert)?;
        let key = load_key(&d.key)?;
        builder
            .with_client_auth_cert(certs, key)
            .map_err(|e| cfg_err(format!("certificate {} and key {}: {e}", d.cert, d.key)))?
    };
    Ok(Arc::new(cfg))
}

/// The name a destination's certificate must carry: `server_name`, or else `host`.
pub fn server_name(d: &Destination) -> String {
    if d.server_name.trim().is_empty() {
        d.host.clone()
    } else {
        d.server_name.trim().to_string()
    }
}

/// Loads every TLS file the settings name (as `serve` would). Returns one note per TLS endpoint.
pub fn check(settings: &Settings) -> Result<Vec<String>, TlsError> {
    let mut notes = Vec::new();
    if settings.server.tls.enabled {
        server_config(&settings.server.tls)?;
        notes.push(format!(
            "SCP TLS: certificate {}, client certificates {}",
            settings.server.tls.cert,
            if settings.server.tls.require_client_cert {
                "required"
            } else {
                "optional"
            }
        ));
    }
    for d in settings.destinations.iter().filter(|d| d.tls) {
        client_config(d)?;
        notes.push(format!(
            "destination {}: TLS, server name {}",
            d.name,
            server_name(d)
        ));
    }
    Ok(notes)
}

/// An error with its chain of causes ("a: b: c"), each once.
pub fn describe_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = s.source();
    }
    parts.join(": ")
}

// ---- X.509 subject (RFC 4514 text) ----

/// One DER element: (tag, content, rest).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *input.first()?;
    let first = *input.get(1)? as usize;
    let (len, head) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *input.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = head.checked_add(len)?;
    Some((tag, input.get(head..end)?, input.get(end..)?))
}

fn oid_text(oid: &[u8]) -> String {
    let mut arcs: Vec<u64> = Vec::new();
    let mut v: u64 = 0;
    for (i, b) in oid.iter().enumerate() {
        v = (v << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if arcs.is_empty() && i < 8 {
                let (a, b2) = if v < 80 {
                    (v / 40, v % 40)
                } else {
                    (2, v - 80)
                };
                arcs.push(a);
                arcs.push(b2);
            } else {
                arcs.push(v);
            }
            v = 0;
        }
    }
    let dotted: Vec<String> = arcs.iter().map(u64::to_string).collect();
    let dotted = dotted.join(".");
    match dotted.as_str() {
        "2.5.4.3" => "CN".into(),
        "2.5.4.6" => "C".into(),
        "2.5.4.7" => "L".into(),
        "2.5.4.8" => "ST".into(),
        "2.5.4.10" => "O".into(),
        "2.5.4.11" => "OU".into(),
        "2.5.4.5" => "serialNumber".into(),
        "0.9.2342.19200300.100.1.25" => "DC".into(),
        "0.9.2342.19200300.100.1.1" => "UID".into(),
        "1.2.840.113549.1.9.1" => "emailAddress".into(),
        _ => dotted,
    }
}

fn escape(value: &str) -> String {
    let mut out = String::new();
    for c in value.chars() {
        if matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The subject of a DER certificate as RFC 4514 text (most specific first, e.g.
/// `CN=ct1,O=Hospital,C=CH`, as `openssl x509 -noout -subject -nameopt RFC2253` prints it).
pub fn subject_of(cert: &[u8]) -> Option<String> {
    let (_, c, _) = der(cert)?;
    let (_, tbs, _) = der(c)?;
    let (tag, _, mut rest) = der(tbs)?;
    if tag == 0xA0 {
        rest = der(rest)?.2; // serial number
    }
    for _ in 0..3 {
        rest = der(rest)?.2; // signature algorithm, issuer, validity
    }
    let (tag, mut name, _) = der(rest)?;
    if tag != 0x30 {
        return None;
    }
    let mut rdns: Vec<String> = Vec::new();
    while !name.is_empty() {
        let (_, mut set, r) = der(name)?;
        name = r;
        let mut parts = Vec::new();
        while !set.is_empty() {
            let (_, atv, r) = der(set)?;
            set = r;
            let (_, oid, r) = der(atv)?;
            let (vtag, value, _) = der(r)?;
            let text = if vtag == 0x1E {
                let units: Vec<u16> = value
                    .chunks(2)
                    .map(|p| u16::from_be_bytes([p[0], *p.get(1).unwrap_or(&0)]))
                    .collect();
                String::from_utf16_lossy(&units)
            } else {
                String::from_utf8_lossy(value).into_owned()
            };
            parts.push(format!("{}={}", oid_text(oid), escape(&text)));
        }
        rdns.push(parts.join("+"));
    }
    rdns.reverse();
    Some(rdns.join(","))
}

/// True when `subject` equals one of `allowed` (order-insensitive).
pub fn subject_allowed(subject: &str, allowed: &[String]) -> bool {
    let s = dn_parts(subject);
    !s.is_empty() && allowed.iter().any(|a| dn_parts(a) == s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_in_place_of_a_certificate_is_named_not_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("ca.pem");
        crate::util::fs::test_support::make_fifo(&fifo);
        let path = fifo.display().to_string();
        let msg = load_certs("CA certificate", &path).unwrap_err().to_string();
        assert!(
            msg.contains("ca.pem") && msg.contains("not a regular file"),
            "{msg}"
        );
        let msg = check_key_file(&fifo).unwrap_err().to_string();
        assert!(msg.contains("not a regular file"), "{msg}");
    }

    #[test]
    fn distinguished_names_compare_regardless_of_order_and_case() {
        let allowed = vec!["CN=ct1, O=Hospital, C=CH".to_string()];
        assert!(subject_allowed("C=CH,O=Hospital,CN=ct1", &allowed));
        assert!(subject_allowed("cn=ct1,o=Hospital,c=CH", &allowed));
        assert!(!subject_allowed("CN=ct2,O=Hospital,C=CH", &allowed));
        assert!(!subject_allowed("CN=ct1,O=Hospital", &allowed));
        assert!(!subject_allowed("", &allowed));
        assert!(subject_allowed(
            "CN=a\\,b,O=x",
            &["O=x,CN=a\\,b".to_string()]
        ));
        assert!(!crate::util::dn::is_dn("not a dn"));
    }

    /// `openssl req -x509 -subj "/C=CH/O=Hospital, Radiology/CN=ct1"` (self-signed, P-256).
    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIByDCCAW+gAwIBAgIUA/UGoMnMByw059zpnsmKACq2TkUwCgYIKoZIzj0EAwIw\nOTELMAkGA1UEBhMCQ0gxHDAaBgNVBAoME0hvc3BpdGFsLCBSYWRpb2xvZ3kxDDAK\nBgNVBAMMA2N0MTAgFw0yNjExMjkxNzQyMTlaGA8yMTI2MTEwNTE3NDIxOVowOTEL\nMAkGA1UEBhMCQ0gxHDAaBgNVBAoME0hvc3BpdGFsLCBSYWRpb2xvZ3kxDDAKBgNV\nBAMMA2N0MTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABOhwa4Afrck0Jh2q47aO\neru9dGJnb6cZoTf2qEfx0QpFzrS45GE3L+YmsgATDPCabyij0FLrtl/VNSNKkH02\ns9GjUzBRMB0GA1UdDgQWBBSYjqcgbn9wWav/SQ8uBgxhhyyyejAfBgNVHSMEGDAW\ngBSYjqcgbn9wWav/SQ8uBgxhhyyyejAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49\nBAMCA0cAMEQCIFDVJQxHhTjaJamz7uz/Hp7q791/zcT+LSSXeqdjk0tQAiBCQfg7\nVsiOWcyH9waT/HeC+Y8yactQXJF2TY5QMLeHLQ==\n-----END CERTIFICATE-----";

    #[test]
    fn subject_is_read_as_openssl_prints_it() {
        let der = CertificateDer::from_pem_slice(CERT.as_bytes()).unwrap();
        let subject = subject_of(&der).unwrap();
        // `openssl x509 -noout -subject -nameopt RFC2253`: CN=ct1,O=Hospital\, Radiology,C=CH
        assert_eq!(subject, "CN=ct1,O=Hospital\\, Radiology,C=CH");
        assert!(subject_allowed(
            &subject,
            &["C=CH, O=Hospital\\, Radiology, CN=ct1".to_string()]
        ));
        assert!(!subject_allowed(
            &subject,
            &["CN=ct1,O=Hospital".to_string()]
        ));
    }

    #[test]
    fn malformed_certificates_have_no_subject() {
        assert_eq!(subject_of(&[]), None);
        assert_eq!(subject_of(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(subject_of(&[0x30, 0x03, 0x30, 0x01]), None);
    }
}
