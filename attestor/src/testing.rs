//! Test support, behind the `testing` feature (tests of this crate and of the server use it;
//! nothing else does): `SoftwareTpm`, a fresh swtpm per test on its own loopback ports,
//! driven with tpm2-tools (TCTI `swtpm:`), and a model measured boot. swtpm has no resource
//! manager, so every command is followed by a flush of transient objects and sessions.
//! A helper that cannot do its job panics: it fails the test that called it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use crate::eventlog::{self, Event};
use crate::tpm::{self, Public};
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::Command;
use tempfile::TempDir;

pub struct SoftwareTpm {
    dir: TempDir,
    port: u16,
}

/// Two consecutive free loopback ports (server and control).
fn free_port_pair() -> u16 {
    for _ in 0..50 {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair");
}

impl SoftwareTpm {
    /// A fresh TPM without an EK certificate.
    pub fn start() -> Self {
        Self::launch(tempfile::tempdir().unwrap())
    }

    /// The TCTI string that reaches this TPM (for tss-esapi and tpm2-tools).
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// A TPM manufactured by `swtpm_setup` with EK certificates signed by a local CA of its
    /// own (in the TPM's temporary directory, not the system's). Returns the TPM, its RSA EK
    /// certificate (DER, read back from the TPM's NV index) and the CA's certificates (PEM:
    /// the issuing CA, then its root): what an operator configures as manufacturer roots.
    pub fn start_with_ek_certificate() -> (Self, Vec<u8>, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("localca");
        std::fs::create_dir(&ca).unwrap();
        let c = ca.display().to_string();
        std::fs::write(
            ca.join("swtpm-localca.conf"),
            format!(
                "statedir = {c}\nsigningkey = {c}/signkey.pem\nissuercert = {c}/issuercert.pem\ncertserial = {c}/certserial\n"
            ),
        )
        .unwrap();
        std::fs::write(
            ca.join("swtpm-localca.options"),
            "--platform-manufacturer Vouch\n--platform-version 2.1\n--platform-model test\n",
        )
        .unwrap();
        std::fs::write(
            ca.join("swtpm_setup.conf"),
            format!(
                "create_certs_tool = /usr/bin/swtpm_localca\ncreate_certs_tool_config = {c}/swtpm-localca.conf\ncreate_certs_tool_options = {c}/swtpm-localca.options\nactive_pcr_banks = sha256\n"
            ),
        )
        .unwrap();
        let out = Command::new("swtpm_setup")
            .args(["--tpm2", "--create-ek-cert", "--overwrite", "--tpmstate"])
            .arg(dir.path())
            .arg("--config")
            .arg(ca.join("swtpm_setup.conf"))
            .output()
            .expect("swtpm_setup is installed (swtpm-tools; tests/run.sh installs it)");
        assert!(
            out.status.success(),
            "swtpm_setup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut roots = std::fs::read(ca.join("issuercert.pem")).unwrap();
        roots.extend(std::fs::read(ca.join("swtpm-localca-rootca-cert.pem")).unwrap());
        let tpm = Self::launch(dir);
        tpm.tool(&["tpm2_nvread", "0x01c00002", "-o", "ek-cert.der"]);
        let cert = std::fs::read(tpm.path("ek-cert.der")).unwrap();
        (tpm, cert, roots)
    }

    fn launch(dir: TempDir) -> Self {
        for _ in 0..5 {
            let port = free_port_pair();
            let d = dir.path().display().to_string();
            let status = Command::new("swtpm")
                .args(["socket", "--tpm2", "--tpmstate"])
                .arg(format!("dir={d}"))
                .args([
                    "--server",
                    &format!("type=tcp,port={port},bindaddr=127.0.0.1"),
                ])
                .args([
                    "--ctrl",
                    &format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1),
                ])
                .args(["--flags", "not-need-init,startup-clear"])
                .args(["--pid", &format!("file={d}/swtpm.pid")])
                .args(["--log", &format!("file={d}/swtpm.log")])
                .arg("-d")
                .status()
                .expect("swtpm is installed (tests/run.sh installs it)");
            if status.success() {
                return Self { dir, port };
            }
        }
        panic!("swtpm did not start");
    }

    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// Runs a tpm2-tools command; panics with its stderr if it fails.
    pub fn tool(&self, args: &[&str]) -> Vec<u8> {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.flush();
        out.stdout
    }

    /// Runs tpm2-tools commands that share a session, flushing only after the last.
    pub fn tools_in_session(&self, commands: &[&[&str]]) -> Result<(), String> {
        let mut result = Ok(());
        for args in commands {
            let out = self.run(args);
            if !out.status.success() {
                result = Err(format!(
                    "{args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
                break;
            }
        }
        self.flush();
        result
    }

    /// Activates a credential made for this TPM's AK under its EK (the device's side of
    /// enrollment); returns the recovered secret.
    pub fn activate_credential(
        &self,
        id_object: &[u8],
        encrypted_secret: &[u8],
    ) -> Result<Vec<u8>, String> {
        // tpm2-tools' credential file: magic 0xBADCC0DE, version 1, then both TPM2Bs.
        let mut file = 0xBADC_C0DEu32.to_be_bytes().to_vec();
        file.extend_from_slice(&1u32.to_be_bytes());
        file.extend_from_slice(id_object);
        file.extend_from_slice(encrypted_secret);
        std::fs::write(self.path("cred.in"), file).unwrap();
        self.tools_in_session(&[
            &[
                "tpm2_startauthsession",
                "--policy-session",
                "-S",
                "session.ctx",
            ],
            &["tpm2_policysecret", "-S", "session.ctx", "-c", "e"],
            &[
                "tpm2_activatecredential",
                "-c",
                "ak.ctx",
                "-C",
                "ek.ctx",
                "-i",
                "cred.in",
                "-o",
                "cred.out",
                "-P",
                "session:session.ctx",
            ],
        ])?;
        Ok(std::fs::read(self.path("cred.out")).unwrap())
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        let (cmd, rest) = args.split_first().unwrap();
        Command::new(cmd)
            .args(rest)
            .current_dir(self.dir.path())
            .env("TPM2TOOLS_TCTI", self.tcti())
            .env("TSS2_LOG", "all+NONE")
            .output()
            .expect("tpm2-tools are installed (tests/run.sh installs them)")
    }

    fn flush(&self) {
        for kind in ["-t", "-s"] {
            let _ = self.run(&["tpm2_flushcontext", kind]);
        }
    }

    /// Creates the RSA EK and an ECC P-256 ECDSA AK under it; returns both public areas.
    pub fn create_ek_ak(&self) -> (Public, Public) {
        self.tool(&["tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub"]);
        self.tool(&[
            "tpm2_createak",
            "-C",
            "ek.ctx",
            "-c",
            "ak.ctx",
            "-G",
            "ecc",
            "-s",
            "ecdsa",
            "-g",
            "sha256",
            "-u",
            "ak.pub",
            "-n",
            "ak.name",
            "-f",
            "tss",
        ]);
        let ek = Public::parse_sized(&std::fs::read(self.path("ek.pub")).unwrap()).unwrap();
        let ak = Public::parse_sized(&std::fs::read(self.path("ak.pub")).unwrap()).unwrap();
        assert_eq!(std::fs::read(self.path("ak.name")).unwrap(), ak.name());
        (ek, ak)
    }

    /// The marshalled `TPMT_PUBLIC` of `ek.pub` or `ak.pub` (as a device sends it: without
    /// the `TPM2B` size that tpm2-tools writes).
    pub fn public_area(&self, file: &str) -> Vec<u8> {
        let sized = std::fs::read(self.path(file)).unwrap();
        sized[2..].to_vec()
    }

    pub fn extend(&self, pcr: u8, digest: &[u8; 32]) {
        self.tool(&[
            "tpm2_pcrextend",
            &format!("{pcr}:sha256={}", hex::encode(digest)),
        ]);
    }

    /// Quotes `pcrs` (SHA-256 bank) with `nonce`; returns (attest, signature, PCR values).
    pub fn quote(&self, nonce: &[u8], pcrs: &[u8]) -> (Vec<u8>, Vec<u8>, BTreeMap<u8, [u8; 32]>) {
        let list: Vec<String> = pcrs.iter().map(u8::to_string).collect();
        let selection = format!("sha256:{}", list.join(","));
        self.tool(&[
            "tpm2_quote",
            "-c",
            "ak.ctx",
            "-l",
            &selection,
            "-q",
            &hex::encode(nonce),
            "-m",
            "quote.msg",
            "-s",
            "quote.sig",
            "-g",
            "sha256",
        ]);
        self.tool(&["tpm2_pcrread", &selection, "-o", "pcrs.bin"]);
        let raw = std::fs::read(self.path("pcrs.bin")).unwrap();
        assert_eq!(raw.len(), 32 * pcrs.len());
        let mut sorted = pcrs.to_vec();
        sorted.sort_unstable();
        let values = sorted
            .iter()
            .zip(raw.chunks(32))
            .map(|(p, v)| (*p, <[u8; 32]>::try_from(v).unwrap()))
            .collect();
        (
            std::fs::read(self.path("quote.msg")).unwrap(),
            std::fs::read(self.path("quote.sig")).unwrap(),
            values,
        )
    }
}

impl Drop for SoftwareTpm {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.path("swtpm.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, data).as_ref());
    out
}

/// The PCRs a device class quotes: boot PCRs 0-7 and the configuration in PCR 8.
pub const QUOTED: [u8; 9] = [0, 1, 2, 3, 4, 5, 6, 7, 8];

/// The events of a measured boot of `firmware` with `config`.
pub fn boot_events(firmware: &str, config: &str) -> Vec<Event> {
    let mut events: Vec<Event> = (0..8u8)
        .map(|pcr| {
            let data = format!("{firmware} stage {pcr}").into_bytes();
            Event {
                pcr,
                event_type: eventlog::EV_POST_CODE,
                sha256: Some(sha256(&data)),
                data,
            }
        })
        .collect();
    let data = format!("config {config}").into_bytes();
    events.push(Event {
        pcr: 8,
        event_type: eventlog::EV_EVENT_TAG,
        sha256: Some(sha256(&data)),
        data,
    });
    events
}

/// Extends the TPM with `events` (as firmware would) and returns the event log.
pub fn measure(tpm: &SoftwareTpm, events: &[Event]) -> Vec<u8> {
    for e in events {
        if let Some(d) = &e.sha256 {
            tpm.extend(e.pcr, d);
        }
    }
    eventlog::write_log(events)
}

/// The reference PCR values of a boot of `firmware` with `config`.
pub fn expected_pcrs(firmware: &str, config: &str) -> BTreeMap<u8, [u8; 32]> {
    eventlog::EventLog::parse(&eventlog::write_log(&boot_events(firmware, config)))
        .unwrap()
        .replay()
        .unwrap()
}

/// The EK's qualified name: the AK's parent.
pub fn ek_qualified_name(ek: &Public) -> Vec<u8> {
    tpm::qualified_name(&tpm::RH_ENDORSEMENT, &ek.name())
}

/// A `reference-values.json` for device class `sensor` quoting [`QUOTED`], accepting one set
/// per `(name, firmware, config)`: the boot PCRs and configuration digest that a boot of that
/// firmware with that configuration measures.
pub fn reference_values_json(sets: &[(&str, &str, &str)]) -> serde_json::Value {
    let accepted: Vec<_> = sets
        .iter()
        .map(|(name, firmware, config)| {
            let pcrs = expected_pcrs(firmware, config);
            let boot: BTreeMap<String, String> = (0..8u8)
                .map(|p| (p.to_string(), hex::encode(pcrs[&p])))
                .collect();
            serde_json::json!({"name": name, "firmware": boot,
                   "config": {"pcr": 8, "digests": [hex::encode(pcrs[&8])]},
                   "min_firmware_version": 0})
        })
        .collect();
    serde_json::json!({"device_classes": {"sensor": {"pcrs": QUOTED, "accepted": accepted}}})
}

/// A stand-in for a TPM that quotes in software, for load tests of the verifier and the API
/// where a real TPM (about 9 ms per quote on swtpm) would measure the TPM instead: an ECC
/// P-256 attestation key with a TPM's attributes, under a made-up RSA EK (unique per
/// instance), producing byte-exact `TPMS_ATTEST` and `TPMT_SIGNATURE` structures.
pub struct SoftwareAk {
    key: ring::signature::EcdsaKeyPair,
    /// The AK's `TPMT_PUBLIC`.
    pub ak_public: Vec<u8>,
    /// The EK's `TPMT_PUBLIC` (its modulus is random: nothing is ever encrypted to it).
    pub ek_public: Vec<u8>,
    rng: ring::rand::SystemRandom,
}

fn put_sized(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

impl SoftwareAk {
    pub fn new() -> Self {
        use ring::rand::SecureRandom;
        use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let point = key.public_key().as_ref().to_vec(); // 0x04 || x || y
        let mut ak = Vec::new();
        ak.extend_from_slice(&tpm::ALG_ECC.to_be_bytes());
        ak.extend_from_slice(&tpm::ALG_SHA256.to_be_bytes());
        // fixedTPM, fixedParent, sensitiveDataOrigin, userWithAuth, restricted, sign.
        ak.extend_from_slice(&0x0005_0072u32.to_be_bytes());
        put_sized(&mut ak, &[]);
        ak.extend_from_slice(&tpm::ALG_NULL.to_be_bytes()); // symmetric
        ak.extend_from_slice(&tpm::ALG_ECDSA.to_be_bytes());
        ak.extend_from_slice(&tpm::ALG_SHA256.to_be_bytes());
        ak.extend_from_slice(&tpm::ECC_NIST_P256.to_be_bytes());
        ak.extend_from_slice(&tpm::ALG_NULL.to_be_bytes()); // kdf
        put_sized(&mut ak, &point[1..33]);
        put_sized(&mut ak, &point[33..65]);

        let mut modulus = vec![0u8; 256];
        rng.fill(&mut modulus).unwrap();
        modulus[0] |= 0x80;
        Self {
            key,
            ak_public: ak,
            ek_public: rsa_ek_public(&modulus, &[0u8; 32]),
            rng,
        }
    }

    /// The AK's name (what credential activation binds the secret to).
    pub fn ak_name(&self) -> Vec<u8> {
        Public::parse(&self.ak_public).unwrap().name()
    }
}

/// An RSA-2048 EK's `TPMT_PUBLIC` with `modulus` and `auth_policy`.
fn rsa_ek_public(modulus: &[u8], auth_policy: &[u8; 32]) -> Vec<u8> {
    {
        let mut ek = Vec::new();
        ek.extend_from_slice(&tpm::ALG_RSA.to_be_bytes());
        ek.extend_from_slice(&tpm::ALG_SHA256.to_be_bytes());
        // fixedTPM, fixedParent, sensitiveDataOrigin, adminWithPolicy, restricted, decrypt.
        ek.extend_from_slice(&0x0003_00b2u32.to_be_bytes());
        put_sized(&mut ek, auth_policy);
        ek.extend_from_slice(&0x0006u16.to_be_bytes()); // AES
        ek.extend_from_slice(&128u16.to_be_bytes());
        ek.extend_from_slice(&0x0043u16.to_be_bytes()); // CFB
        ek.extend_from_slice(&tpm::ALG_NULL.to_be_bytes()); // scheme
        ek.extend_from_slice(&2048u16.to_be_bytes());
        ek.extend_from_slice(&0u32.to_be_bytes());
        put_sized(&mut ek, modulus);
        ek
    }
}

impl SoftwareAk {
    /// A quote of `values` (the SHA-256 bank) over `nonce`: (`TPMS_ATTEST`, `TPMT_SIGNATURE`).
    pub fn quote(&self, nonce: &[u8], values: &BTreeMap<u8, [u8; 32]>) -> (Vec<u8>, Vec<u8>) {
        let ak = Public::parse(&self.ak_public).unwrap();
        let ek = Public::parse(&self.ek_public).unwrap();
        let signer = tpm::qualified_name(&ek_qualified_name(&ek), &ak.name());
        let pcrs: Vec<u8> = values.keys().copied().collect();
        let mut attest = Vec::new();
        attest.extend_from_slice(&tpm::TPM_GENERATED.to_be_bytes());
        attest.extend_from_slice(&tpm::ST_ATTEST_QUOTE.to_be_bytes());
        put_sized(&mut attest, &signer);
        put_sized(&mut attest, nonce);
        attest.extend_from_slice(&[0u8; 17]); // clock, resetCount, restartCount, safe
        attest.extend_from_slice(&1u64.to_be_bytes()); // firmwareVersion
        attest.extend_from_slice(&tpm::PcrSelection::sha256(&pcrs).to_bytes());
        put_sized(&mut attest, &crate::quote::pcr_digest(values));
        let sig = self.key.sign(&self.rng, &attest).unwrap();
        let (r, s) = sig.as_ref().split_at(32);
        let mut signature = Vec::new();
        signature.extend_from_slice(&tpm::ALG_ECDSA.to_be_bytes());
        signature.extend_from_slice(&tpm::ALG_SHA256.to_be_bytes());
        put_sized(&mut signature, r);
        put_sized(&mut signature, s);
        (attest, signature)
    }
}

impl Default for SoftwareAk {
    fn default() -> Self {
        Self::new()
    }
}

/// A copy of the policy repository `examples` (schema, fleet definitions, policies; not its
/// tests) with `reference-values.json` accepting `sets` (see [`reference_values_json`]) in
/// `into`: the policy directory of a server under test.
pub fn policy_dir_with_references(
    examples: &std::path::Path,
    into: &std::path::Path,
    sets: &[(&str, &str, &str)],
) {
    std::fs::create_dir_all(into.join("policies")).unwrap();
    for name in ["schema.cedarschema", "fleet.json"] {
        std::fs::copy(examples.join(name), into.join(name)).unwrap();
    }
    for entry in std::fs::read_dir(examples.join("policies")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), into.join("policies").join(entry.file_name())).unwrap();
    }
    write_reference_values(into, sets);
}

/// Writes `reference-values.json` accepting `sets` into the policy directory `dir`.
pub fn write_reference_values(dir: &std::path::Path, sets: &[(&str, &str, &str)]) {
    let json = reference_values_json(sets).to_string();
    std::fs::write(dir.join("reference-values.json"), json).unwrap();
}

/// A device for enrollment load tests: a [`SoftwareAk`] under an RSA EK whose private key is
/// held here, so `TPM2_ActivateCredential` is answered in software (exactly as a TPM
/// computes it). Generating an RSA key takes a tenth of a second, so identities may share
/// one: `tag` goes into the EK's authPolicy, which makes each EK's public area, and so its
/// identity to the server, distinct while the server's work (an RSA-OAEP encryption to a
/// 2048-bit modulus) stays the same.
pub struct SoftwareTpmIdentity {
    /// The attestation key.
    pub ak: SoftwareAk,
    ek_key: std::sync::Arc<rsa::RsaPrivateKey>,
}

/// A new RSA-2048 key for [`SoftwareTpmIdentity`] EKs.
pub fn rsa_ek_key() -> std::sync::Arc<rsa::RsaPrivateKey> {
    let rng = ring::rand::SystemRandom::new();
    std::sync::Arc::new(
        rsa::RsaPrivateKey::new(&mut crate::credential::RingRng(&rng), 2048).unwrap(),
    )
}

impl SoftwareTpmIdentity {
    /// An identity with its own AK, under `ek_key` tagged `tag`.
    pub fn new(ek_key: std::sync::Arc<rsa::RsaPrivateKey>, tag: u64) -> Self {
        use rsa::traits::PublicKeyParts;
        let mut ak = SoftwareAk::new();
        let mut policy = [0u8; 32];
        policy[..8].copy_from_slice(&tag.to_be_bytes());
        ak.ek_public = rsa_ek_public(&ek_key.n().to_bytes_be(), &policy);
        Self { ak, ek_key }
    }

    /// `TPM2_ActivateCredential`: recovers the secret from the `TPM2B_ID_OBJECT` and
    /// `TPM2B_ENCRYPTED_SECRET` (each with its size) that MakeCredential wrapped for this
    /// EK and AK, checking the integrity HMAC first.
    pub fn activate(&self, id_object: &[u8], encrypted_secret: &[u8]) -> Result<Vec<u8>, String> {
        use cfb_mode::cipher::{AsyncStreamCipher, KeyIvInit};
        let sized = |b: &[u8]| -> Result<Vec<u8>, String> {
            let (len, rest) = b.split_at_checked(2).ok_or("short")?;
            let len = u16::from_be_bytes([len[0], len[1]]) as usize;
            rest.get(..len)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| "short".to_owned())
        };
        let secret = sized(encrypted_secret)?;
        let padding = rsa::Oaep::new_with_label::<sha2::Sha256, _>("IDENTITY\0");
        let seed = self
            .ek_key
            .decrypt(padding, &secret)
            .map_err(|e| e.to_string())?;
        let body = sized(id_object)?;
        let integrity = sized(&body)?;
        let enc_identity = body.get(2 + integrity.len()..).ok_or("short")?;
        let ak_name = self.ak.ak_name();
        let hmac_key = crate::credential::kdfa(&seed, "INTEGRITY", &[], &[], 256);
        let mut ctx = ring::hmac::Context::with_key(&ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &hmac_key,
        ));
        ctx.update(enc_identity);
        ctx.update(&ak_name);
        if ctx.sign().as_ref() != integrity.as_slice() {
            return Err("the integrity HMAC does not match".into());
        }
        let key: [u8; 16] = crate::credential::kdfa(&seed, "STORAGE", &ak_name, &[], 128)
            .try_into()
            .map_err(|_| "key size")?;
        let mut identity = enc_identity.to_vec();
        cfb_mode::Decryptor::<aes::Aes128>::new(&key.into(), &[0u8; 16].into())
            .decrypt(&mut identity);
        sized(&identity)
    }
}

#[cfg(test)]
mod software_activation {
    use super::*;

    #[test]
    fn a_credential_made_for_the_identity_activates_and_one_for_another_ak_does_not() {
        let key = rsa_ek_key();
        let (one, two) = (
            SoftwareTpmIdentity::new(key.clone(), 1),
            SoftwareTpmIdentity::new(key, 2),
        );
        assert_ne!(one.ak.ek_public, two.ak.ek_public, "distinct EKs");
        let rng = ring::rand::SystemRandom::new();
        let ek = Public::parse(&one.ak.ek_public).unwrap();
        let made = crate::credential::make_credential(&ek, &one.ak.ak_name(), b"the secret", &rng)
            .unwrap();
        assert_eq!(
            one.activate(&made.id_object, &made.encrypted_secret)
                .unwrap(),
            b"the secret"
        );
        // The same EK key, another AK: the integrity check fails.
        assert!(two
            .activate(&made.id_object, &made.encrypted_secret)
            .is_err());
    }
}
