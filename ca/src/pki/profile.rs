//! The device certificate profile: a valid X.509-SVID with the device's zone.
//!
//! - Subject: `O=<trust domain>, OU=<zone>, CN=<device id>`. The zone lives in the subject's
//!   organizational unit, so `openssl x509 -subject` shows it and SPIFFE verifiers, which ignore
//!   the subject, are unaffected.
//! - Subject alternative name: exactly one URI, `spiffe://<trust domain>/device/<device id>`.
//! - basicConstraints with cA absent, i.e. FALSE (critical), keyUsage digitalSignature
//!   (critical), extendedKeyUsage serverAuth + clientAuth, subject and authority key
//!   identifiers, a CRL distribution point, a random 128-bit serial.
//!
//! Every certificate here is DER-exact: the extensions rcgen would encode otherwise come from
//! [`super::extensions`].

use super::authority::Authority;
use super::extensions::{
    end_entity_basic_constraints, key_usage, subject_key_identifier, KeyUsageBit,
};
use super::PkiError;
use crate::ids::{DeviceId, Serial, TrustDomain, Zone};
use rcgen::{
    CertificateParams, CrlDistributionPoint, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    IsCa, SanType,
};
use time::{Duration, OffsetDateTime};
use vouch_proto::bundle::POLICY_SIGNER_PATH;

/// Backdating of `notBefore`, so that a device whose clock is slightly behind accepts a
/// certificate it has just received.
pub(crate) const BACKDATE: Duration = Duration::minutes(5);

/// Everything that goes into one device certificate.
#[derive(Debug)]
pub struct DeviceCertificateSpec<'a> {
    /// The device the certificate names.
    pub device_id: &'a DeviceId,
    /// The trust domain of its SPIFFE ID.
    pub trust_domain: &'a TrustDomain,
    /// The device's zone.
    pub zone: &'a Zone,
    /// The serial number (drawn by the caller, unique in the registry).
    pub serial: &'a Serial,
    /// Issue time.
    pub now: OffsetDateTime,
    /// Lifetime from `now`.
    pub lifetime: Duration,
    /// Where the CRL is published (`https://.../v1/crl`).
    pub crl_url: &'a str,
}

/// A signed device certificate.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    /// DER bytes.
    pub der: Vec<u8>,
    /// PEM text.
    pub pem: String,
    /// Start of validity (backdated).
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

/// Issues the device certificate of `spec` for `public_key`: the SPIFFE ID as the only URI
/// SAN, the zone as subject OU, keyUsage digitalSignature only (critical), serverAuth and
/// clientAuth, and the CRL distribution point.
pub fn issue_device_certificate(
    ca: &Authority,
    spec: &DeviceCertificateSpec<'_>,
    public_key: &impl rcgen::PublicKeyData,
) -> Result<IssuedCertificate, PkiError> {
    // Certificates carry whole seconds; so do the times we record and report.
    let now = spec.now.replace_nanosecond(0).unwrap_or(spec.now);
    let mut params = device_params(spec, now - BACKDATE, now + spec.lifetime)?;
    end_entity_signing_key(&mut params, public_key);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    sign(ca, params, public_key)
}

/// Issues the key-agreement certificate that goes with `device` (the device certificate
/// issued for the same `spec`, but for its own serial): the same subject, SPIFFE ID, zone
/// and validity, for an ECDH P-256 key, with keyUsage keyAgreement only (critical) and no
/// extended key usage. Messages are encrypted to this key; it never signs, and the device
/// key never agrees keys.
pub fn issue_key_agreement_certificate(
    ca: &Authority,
    spec: &DeviceCertificateSpec<'_>,
    device: &IssuedCertificate,
    public_key: &impl rcgen::PublicKeyData,
) -> Result<IssuedCertificate, PkiError> {
    let mut params = device_params(spec, device.not_before, device.not_after)?;
    params.is_ca = IsCa::NoCa;
    params.key_usages = Vec::new();
    params.custom_extensions.extend([
        end_entity_basic_constraints(),
        key_usage(&[KeyUsageBit::KeyAgreement]),
        subject_key_identifier(public_key.der_bytes()),
    ]);
    sign(ca, params, public_key)
}

/// What a device's certificates share: subject, SPIFFE ID, CRL distribution point, serial
/// and validity.
fn device_params(
    spec: &DeviceCertificateSpec<'_>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, spec.trust_domain.as_str());
    dn.push(DnType::OrganizationalUnitName, spec.zone.as_str());
    dn.push(DnType::CommonName, spec.device_id.as_str());
    params.distinguished_name = dn;
    let uri = spec.device_id.spiffe_id(spec.trust_domain);
    params.subject_alt_names = vec![SanType::URI(uri.try_into()?)];
    params.use_authority_key_identifier_extension = true;
    params.crl_distribution_points = vec![CrlDistributionPoint {
        uris: vec![spec.crl_url.to_owned()],
    }];
    params.serial_number = Some(rcgen::SerialNumber::from_slice(spec.serial.bytes()));
    params.not_before = not_before;
    params.not_after = not_after;
    Ok(params)
}

fn sign(
    ca: &Authority,
    params: CertificateParams,
    public_key: &impl rcgen::PublicKeyData,
) -> Result<IssuedCertificate, PkiError> {
    let (not_before, not_after) = (params.not_before, params.not_after);
    let (issuer, issuer_key) = ca.issuer();
    let cert = params.signed_by(public_key, issuer, issuer_key)?;
    Ok(IssuedCertificate {
        der: cert.der().to_vec(),
        pem: cert.pem(),
        not_before,
        not_after,
    })
}

/// Issues the server's own TLS certificate for `hostnames` (DNS names or IP addresses).
pub(crate) fn issue_server_certificate(
    ca: &Authority,
    hostnames: &[String],
    now: OffsetDateTime,
    lifetime: Duration,
) -> Result<(IssuedCertificate, rcgen::KeyPair), PkiError> {
    let mut params = CertificateParams::new(hostnames.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "vouch server");
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    issue_for_fresh_key(ca, params, now, lifetime)
}

/// Issues a certificate for a fresh key that signs policy bundles: SAN
/// `spiffe://<trust domain>/vouch/policy-signer`, keyUsage digitalSignature, extendedKeyUsage
/// codeSigning only (so it cannot serve as a TLS identity). The key stays in memory.
pub(crate) fn issue_policy_signer_certificate(
    ca: &Authority,
    trust_domain: &TrustDomain,
    now: OffsetDateTime,
    lifetime: Duration,
) -> Result<(IssuedCertificate, rcgen::KeyPair), PkiError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, trust_domain.as_str());
    dn.push(DnType::CommonName, "vouch policy signer");
    params.distinguished_name = dn;
    let uri = format!("spiffe://{}/{POLICY_SIGNER_PATH}", trust_domain.as_str());
    params.subject_alt_names = vec![SanType::URI(uri.try_into()?)];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
    issue_for_fresh_key(ca, params, now, lifetime)
}

/// Makes `params` an end entity whose key signs: basicConstraints without cA, keyUsage
/// digitalSignature only, and the subject key identifier of `public_key`.
fn end_entity_signing_key(params: &mut CertificateParams, public_key: &impl rcgen::PublicKeyData) {
    params.is_ca = IsCa::NoCa;
    params.key_usages = Vec::new();
    params.custom_extensions.extend([
        end_entity_basic_constraints(),
        key_usage(&[KeyUsageBit::DigitalSignature]),
        subject_key_identifier(public_key.der_bytes()),
    ]);
}

/// Completes `params` as an end-entity certificate (digitalSignature, AKI, a random serial,
/// backdated `notBefore`) for a fresh P-256 key and signs it with the issuing CA.
fn issue_for_fresh_key(
    ca: &Authority,
    mut params: CertificateParams,
    now: OffsetDateTime,
    lifetime: Duration,
) -> Result<(IssuedCertificate, rcgen::KeyPair), PkiError> {
    let now = now.replace_nanosecond(0).unwrap_or(now);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    end_entity_signing_key(&mut params, &key);
    params.use_authority_key_identifier_extension = true;
    let serial =
        crate::ids::Serial::random(&crate::ids::system_rng()).map_err(|_| PkiError::Random)?;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(serial.bytes()));
    params.not_before = now - BACKDATE;
    params.not_after = now + lifetime;
    let (issuer, issuer_key) = ca.issuer();
    let cert = params.signed_by(&key, issuer, issuer_key)?;
    Ok((
        IssuedCertificate {
            der: cert.der().to_vec(),
            pem: cert.pem(),
            not_before: now - BACKDATE,
            not_after: now + lifetime,
        },
        key,
    ))
}
