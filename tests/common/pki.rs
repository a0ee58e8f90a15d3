//! A throw-away PKI for the DICOM TLS tests, made with /usr/bin/openssl: a CA and leaf certificates
//! (`server` for 127.0.0.1/localhost, `client` "CN=ct1,O=Hospital", `intruder`, `other`), keys 0600.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::daemon::{entry, scp_dest_fields};
use super::text;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A test PKI: `<dir>/pki/{ca,server,client,intruder,other}.{crt,key}`.
pub struct Pki {
    pub dir: PathBuf,
}

pub fn openssl(args: &[&str]) {
    let o = Command::new("/usr/bin/openssl")
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "openssl {args:?}: {}", text(&o));
}

impl Pki {
    pub fn new(root: &Path) -> Pki {
        let dir = root.join("pki");
        std::fs::create_dir_all(&dir).unwrap();
        let p = Pki { dir };
        let (ca_key, ca_crt) = (p.key("ca"), p.crt("ca"));
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &ca_key,
            "-out",
            &ca_crt,
            "-days",
            "2",
            "-subj",
            "/CN=ct-harmonizer test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        p.leaf("server", "/CN=localhost", "DNS:localhost,IP:127.0.0.1");
        p.leaf("client", "/O=Hospital/CN=ct1", "DNS:ct1");
        p.leaf("intruder", "/O=Elsewhere/CN=intruder", "DNS:intruder");
        p.leaf("other", "/CN=other.example", "DNS:other.example");
        p
    }

    pub fn key(&self, name: &str) -> String {
        self.dir.join(format!("{name}.key")).display().to_string()
    }

    pub fn crt(&self, name: &str) -> String {
        self.dir.join(format!("{name}.crt")).display().to_string()
    }

    pub fn leaf(&self, name: &str, subject: &str, san: &str) {
        let csr = self.dir.join(format!("{name}.csr")).display().to_string();
        let ext = self.dir.join(format!("{name}.ext"));
        std::fs::write(
            &ext,
            format!(
                "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName={san}\n"
            ),
        )
        .unwrap();
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &self.key(name),
            "-out",
            &csr,
            "-subj",
            subject,
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &self.crt("ca"),
            "-CAkey",
            &self.key("ca"),
            "-CAcreateserial",
            "-out",
            &self.crt(name),
            "-days",
            "2",
            "-extfile",
            &ext.display().to_string(),
        ]);
        std::fs::set_permissions(self.key(name), std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    /// DCMTK's TLS options with `name`'s key and certificate (None: anonymous TLS, no certificate).
    pub fn dcmtk_args(&self, name: Option<&str>) -> Vec<String> {
        let mut v: Vec<String> = match name {
            Some(n) => vec!["+tls".into(), self.key(n), self.crt(n)],
            None => vec!["+tla".into()],
        };
        v.extend(["+cf".into(), self.crt("ca")]);
        v
    }

    /// `[server.tls]` overrides: enabled, our server certificate, client certificates required.
    pub fn server_overrides(&self, allowed_subjects: &str) -> Vec<(String, String)> {
        let q = |s: String| format!("{s:?}");
        vec![
            ("server.tls.enabled".into(), "true".into()),
            ("server.tls.cert".into(), q(self.crt("server"))),
            ("server.tls.key".into(), q(self.key("server"))),
            ("server.tls.ca".into(), q(self.crt("ca"))),
            (
                "server.tls.allowed_subjects".into(),
                allowed_subjects.into(),
            ),
        ]
    }

    /// A TLS `[[destinations]]` entry presenting our server certificate as client certificate.
    pub fn tls_dest(&self, name: &str, ae: &str, port: u16, server_name: &str) -> String {
        let mut fields = scp_dest_fields(name, ae, port);
        fields.extend([
            ("tls", true.into()),
            ("ca", self.crt("ca").into()),
            ("cert", self.crt("server").into()),
            ("key", self.key("server").into()),
            ("server_name", server_name.into()),
        ]);
        entry("destinations", &fields)
    }
}
