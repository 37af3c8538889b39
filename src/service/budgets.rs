//! Populations and privacy budgets as the service sees them: which
//! datasets share a budget, what each tenant has left, and grants of more.

use super::*;

impl Service {
    /// Every registered dataset's population.
    pub fn populations(&self) -> Result<std::collections::BTreeMap<String, String>, ServiceError> {
        let mut populations = std::collections::BTreeMap::new();
        for id in self.catalog.ids()? {
            let version = self.catalog.get(&id)?;
            populations.insert(id, version.manifest.population().to_string());
        }
        Ok(populations)
    }

    /// The budget `dataset`'s noisy answers are charged to: its population,
    /// every registered member, and the tightest caps their policies state.
    /// `None` when no member's policy allows a noisy mode.
    pub fn population_of(
        &self,
        dataset: &str,
    ) -> Result<Option<crate::dp::budget::Population>, ServiceError> {
        Ok(self.population_in(&self.populations()?, dataset))
    }

    /// [`Service::population_of`] against a map from [`Service::populations`]
    /// read once, for callers that ask about several datasets.
    pub(super) fn population_in(
        &self,
        populations: &std::collections::BTreeMap<String, String>,
        dataset: &str,
    ) -> Option<crate::dp::budget::Population> {
        let id = populations.get(dataset)?.clone();
        let datasets: Vec<String> = populations
            .iter()
            .filter(|(_, p)| **p == id)
            .map(|(d, _)| d.clone())
            .collect();
        self.policies
            .current()
            .population_caps(&datasets)
            .map(|caps| crate::dp::budget::Population { id, datasets, caps })
    }

    /// A tenant's budgets on every population with a noisy mode.
    pub async fn budgets(
        &self,
        tenant: &str,
    ) -> Result<Vec<crate::dp::budget::Budget>, ServiceError> {
        let mut list = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        let populations = self.populations()?;
        for dataset in populations.keys() {
            if let Some(population) = self.population_in(&populations, dataset)
                && seen.insert(population.id.clone())
            {
                list.push(crate::dp::budget::budget(&self.store, tenant, &population).await?);
            }
        }
        Ok(list)
    }

    /// Raise a tenant's cap on a dataset's population (audited); returns
    /// the new budget.
    pub async fn grant_budget(
        &self,
        actor: &str,
        tenant: &str,
        dataset: &str,
        amount: crate::dp::budget::Cost,
        reason: &str,
    ) -> Result<crate::dp::budget::Budget, ServiceError> {
        let population = self
            .population_of(dataset)?
            .ok_or_else(|| ServiceError::NoAccess(dataset.to_string()))?;
        crate::dp::budget::grant(
            &self.store,
            actor,
            tenant,
            &population,
            dataset,
            amount,
            reason,
        )
        .await?;
        Ok(crate::dp::budget::budget(&self.store, tenant, &population).await?)
    }
}
