//! Signed receipts: what ran, on what, under which policy, with which
//! result. Anyone holding the public keys verifies a receipt offline.
//!
//! The signature is Ed25519 over the RFC 8785 (JCS) canonical JSON of the
//! receipt without its `signature` field, so field order and whitespace do
//! not matter and any changed value does.

pub mod keys;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use keys::{KeyError, KeyRing, PublicKey, Signer};

/// A dataset version a job read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetRef {
    pub id: String,
    /// Hex SHA-256 of the version's bytes.
    pub version: String,
}

/// The privacy budget a release spent (zero in aggregate mode), and whether
/// its values carry cell-key perturbation.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct PrivacyCost {
    pub epsilon: f64,
    pub delta: f64,
    /// ρ charged under zCDP accounting (absent when none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rho: f64,
    /// Aggregate mode with cell-key perturbation: released counts and sums
    /// are perturbed (absent from receipts of exact releases).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub perturbed: bool,
}

fn is_zero(value: &f64) -> bool {
    *value == 0.0
}

/// Everything a receipt asserts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptBody {
    /// Receipt format version.
    pub format: u32,
    pub job_id: String,
    /// Set on a scoring subject's own receipt: the batch's receipt cut down
    /// to that subject's output (same job, same audit entry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub module_sha256: String,
    pub world: String,
    pub mode: String,
    pub datasets: Vec<DatasetRef>,
    pub policy_sha256: Option<String>,
    pub params_sha256: String,
    pub privacy_cost: PrivacyCost,
    /// SHA-256 of the released output's canonical JSON.
    pub output_sha256: String,
    /// The output itself when small.
    pub output: Option<serde_json::Value>,
    /// Seconds since the Unix epoch.
    pub released_at: u64,
    /// Sequence number of the audit entry that records the release.
    pub audit_position: u64,
    /// Token ids of the administrators whose approvals released a held
    /// output (set only for reviewed releases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reviewers: Option<Vec<String>>,
    pub key_id: String,
}

/// A signed receipt, as JSON: the body's fields plus `signature`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    #[serde(flatten)]
    pub body: ReceiptBody,
    /// Hex Ed25519 signature over the JCS canonical body.
    pub signature: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("not a receipt: {0}")]
    Malformed(String),
    #[error("signed by unknown key {0}")]
    UnknownKey(String),
    #[error("bad signature: the receipt was altered or not signed by key {0}")]
    BadSignature(String),
    #[error(
        "output hash mismatch: the receipt names {expected}, the given output hashes to {actual}"
    )]
    OutputMismatch { expected: String, actual: String },
}

/// The canonical bytes of a JSON value (RFC 8785).
pub fn canonical_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_jcs::to_vec(value).expect("receipt values serialise")
}

/// Hex SHA-256 of a value's canonical JSON.
pub fn canonical_hash<T: Serialize>(value: &T) -> String {
    hex::encode(Sha256::digest(canonical_json(value)))
}

impl Receipt {
    pub fn sign(body: ReceiptBody, signer: &Signer) -> Receipt {
        let signature = hex::encode(signer.sign(&canonical_json(&body)));
        Receipt { body, signature }
    }

    /// Verify against known public keys and, if given, the output.
    pub fn verify(
        json: &[u8],
        keys: &[PublicKey],
        output: Option<&serde_json::Value>,
    ) -> Result<Receipt, VerifyError> {
        let receipt: Receipt =
            serde_json::from_slice(json).map_err(|e| VerifyError::Malformed(e.to_string()))?;
        let key_id = &receipt.body.key_id;
        let key = keys
            .iter()
            .find(|k| &k.key_id == key_id)
            .ok_or_else(|| VerifyError::UnknownKey(key_id.clone()))?;
        let public =
            hex::decode(&key.public_key).map_err(|e| VerifyError::Malformed(e.to_string()))?;
        let signature = hex::decode(&receipt.signature)
            .map_err(|_| VerifyError::BadSignature(key_id.clone()))?;
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &public)
            .verify(&canonical_json(&receipt.body), &signature)
            .map_err(|_| VerifyError::BadSignature(key_id.clone()))?;
        if let Some(output) = output {
            let actual = canonical_hash(output);
            if actual != receipt.body.output_sha256 {
                return Err(VerifyError::OutputMismatch {
                    expected: receipt.body.output_sha256.clone(),
                    actual,
                });
            }
        }
        Ok(receipt)
    }
}
