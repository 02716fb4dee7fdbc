//! Authorize: the station asks whether an id token may charge.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::common::*;
use super::enums::*;

/// OCPP `OCSPRequestDataType`: data to check an ISO 15118 certificate's revocation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OcspRequestData {
    /// Hash algorithm of the name and key hashes.
    pub hash_algorithm: HashAlgorithm,
    /// Hash of the issuer's distinguished name.
    pub issuer_name_hash: String,
    /// Hash of the issuer's public key.
    pub issuer_key_hash: String,
    /// Certificate serial number.
    pub serial_number: String,
    /// OCSP responder.
    #[serde(rename = "responderURL")]
    pub responder_url: String,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Authorize request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizeRequest {
    /// The token presented.
    pub id_token: IdToken,
    /// ISO 15118 contract certificate (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// Revocation check data (1 to 4 entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iso15118_certificate_hash_data: Option<Vec<OcspRequestData>>,
    /// Unmodelled fields (`customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Authorize response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizeResponse {
    /// The verdict on the token.
    pub id_token_info: IdTokenInfo,
    /// The verdict on the certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_status: Option<AuthorizeCertificateStatus>,
    /// Energy transfer modes allowed (2.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_energy_transfer: Option<Vec<EnergyTransferMode>>,
    /// Unmodelled fields (`tariff` of 2.1, `customData`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}
