//! Bearer-token authentication as axum extractors: [`Caller`] for any
//! valid token, [`Admin`] for the admin role (403 otherwise).

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;

use super::AppState;
use super::error::ApiError;
use crate::accounts::{self, AuthError, Principal};
use crate::service::Submitter;

/// Any authenticated principal.
pub struct Caller(pub Principal);

/// An authenticated administrator.
pub struct Admin(pub Principal);

impl Caller {
    pub fn submitter(&self) -> Submitter {
        Submitter {
            tenant: self.0.tenant.clone(),
            role: self.0.role,
            actor: self.0.actor(),
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(AuthError::Malformed)?;
        Ok(Caller(
            accounts::authenticate(&state.service.store, token.trim()).await?,
        ))
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Caller(principal) = Caller::from_request_parts(parts, state).await?;
        if principal.is_admin() {
            Ok(Admin(principal))
        } else {
            Err(ApiError::forbidden())
        }
    }
}
