//! Conditional access: a dataset's agreement and the checks on an
//! application before it is recorded.

use super::*;

impl Service {
    /// A dataset's data-use agreement (conditional datasets).
    pub fn agreement(&self, dataset: &str) -> Option<crate::policy::Agreement> {
        self.policies
            .current()
            .policy_for(dataset)?
            .agreement
            .clone()
    }

    /// Check and record an application for a conditional dataset; the
    /// answer is due `working_days` working days later.
    pub async fn apply(
        &self,
        submitter: &Submitter,
        request: crate::applications::NewApplication,
        working_days: u32,
        holidays: &[i64],
    ) -> Result<crate::applications::Application, ServiceError> {
        use crate::applications::ApplicationProblem as Problem;
        let refuse = |problem: Problem| Err(ServiceError::Application(problem));
        let version = match self.catalog.get(&request.dataset) {
            Ok(v) if v.manifest.classification == Classification::Conditional => v,
            Ok(v) if v.manifest.classification == Classification::Open => {
                return refuse(Problem::OpenDataset(v.id.clone()));
            }
            // Restricted and unknown look alike.
            _ => return Err(ServiceError::NoAccess(request.dataset.clone())),
        };
        if request.purpose.trim().is_empty() || request.intended_outputs.trim().is_empty() {
            return refuse(Problem::NoPurpose);
        }
        if request.columns.is_empty()
            || request
                .columns
                .iter()
                .any(|c| !version.manifest.columns.iter().any(|d| &d.name == c))
        {
            return refuse(Problem::Columns);
        }
        let policy = self.policies.current().policy_for(&version.id);
        let allowed: Vec<&str> = policy
            .as_ref()
            .map(|p| p.modes.iter().map(|m| m.name()).collect())
            .unwrap_or_default();
        if request.modes.is_empty() || request.modes.iter().any(|m| !allowed.contains(&m.as_str()))
        {
            return refuse(Problem::Modes(
                allowed.iter().map(|m| m.to_string()).collect(),
            ));
        }
        if !(1..=366).contains(&request.term_days) {
            return refuse(Problem::TermDays);
        }
        let Some(agreement) = policy.and_then(|p| p.agreement.clone()) else {
            return refuse(Problem::NoAgreement(version.id.clone()));
        };
        if request.agreement_sha256 != agreement.sha256 {
            return refuse(Problem::StaleAgreement {
                version: agreement.version,
                sha256: agreement.sha256,
            });
        }
        let deadline = crate::applications::deadline(crate::store::now(), working_days, holidays);
        Ok(crate::applications::submit(
            &self.store,
            &submitter.tenant,
            &submitter.actor,
            &request,
            &agreement.version,
            deadline,
        )
        .await?)
    }
}
