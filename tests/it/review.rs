//! Human output review over real HTTP: a policy that requires review holds
//! the output; two administrators other than the author approve it blind
//! and the receipt names them; one rejection or a change request stops it.

use crate::common;

use common::{TestServer, aggregate_job, guest};
use datasandbox::accounts::Role;
use datasandbox::client::Client;
use datasandbox::receipt::Receipt;

/// The repository's policies with review required on the register.
fn reviewed_policies() -> tempfile::TempDir {
    policies_with("review = \"required\"")
}

/// The repository's policies with `review` set to `review`.
fn policies_with(review: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let source = common::repo().join("policies");
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path)
                .unwrap()
                .replace("review = \"none\"", review);
            std::fs::write(dir.path().join(path.file_name().unwrap()), text).unwrap();
        }
    }
    std::fs::create_dir(dir.path().join("agreements")).unwrap();
    for entry in std::fs::read_dir(source.join("agreements")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(
            &path,
            dir.path()
                .join("agreements")
                .join(path.file_name().unwrap()),
        )
        .unwrap();
    }
    dir
}

async fn held_job(analyst: &Client, module: &str) -> String {
    let job = aggregate_job(analyst, module, "enterprises", serde_json::json!({})).await;
    assert_eq!(job.state, "held", "{job:?}");
    job.id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_blind_approvals_release_with_a_receipt_naming_the_reviewers() {
    let policies = reviewed_policies();
    let mut server = TestServer::start_in(policies.path(), |_| {}).await;
    server.admin.grant("lab-a", "enterprises").await.unwrap();
    let analyst = server.client(Role::Analyst, "lab-a").await;
    let reviewer_a = server.client(Role::Admin, "platform").await;
    let reviewer_b = server.client(Role::Admin, "platform").await;
    let module = analyst
        .upload_module(guest("district_stats"), None)
        .await
        .unwrap()
        .sha256;
    let job = held_job(&analyst, &module).await;
    // Held: nothing released, no receipt; the author sees the pre-checks
    // but not the output.
    assert_eq!(
        analyst.job_output(&job).await.unwrap_err().code(),
        Some("not-released")
    );
    let mine = analyst.job_review(&job).await.unwrap();
    assert_eq!(mine.state, "held");
    assert!(mine.outputs.is_null());
    let checks: Vec<String> = mine.context["prechecks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["check"].as_str().unwrap().to_string())
        .collect();
    assert!(
        checks.contains(&"unrounded-small-count".to_string()),
        "{checks:?}"
    );
    // Codes and counts only: none of the queries, outcomes, metadata or
    // output names reviewers see.
    assert_eq!(
        mine.context.as_object().unwrap().keys().collect::<Vec<_>>(),
        vec!["prechecks"]
    );
    for finding in mine.context["prechecks"].as_array().unwrap() {
        assert_eq!(finding.as_object().unwrap().len(), 2, "{finding}");
        assert!(finding["count"].as_u64().unwrap() >= 1);
    }
    // Reviewers see the context: module, the SQL with its outcome, the
    // release rule, the policy.
    let held = reviewer_a.held_output(&job).await.unwrap();
    assert_eq!(held.context["module_sha256"], module.as_str());
    assert!(
        held.context["queries"][0]["sql"]
            .as_str()
            .unwrap()
            .contains("GROUP BY district")
    );
    assert_eq!(held.context["queries"][0]["outcome"], "ok");
    assert!(held.context["reports"][0]["metadata"]["datasandbox.release"].is_string());
    assert!(held.outputs.is_array());
    assert_eq!(
        reviewer_a.decide(&job, "approve", "").await.unwrap(),
        "held"
    );
    assert_eq!(
        reviewer_a
            .decide(&job, "approve", "")
            .await
            .unwrap_err()
            .code(),
        Some("already-decided")
    );
    // Blind: the second reviewer does not see the first one's decision.
    let seen = reviewer_b.held_output(&job).await.unwrap();
    assert!(seen.decisions.is_empty(), "{:?}", seen.decisions);
    assert_eq!(
        reviewer_a.held_output(&job).await.unwrap().decisions.len(),
        1
    );
    assert_eq!(
        reviewer_b.decide(&job, "approve", "fine").await.unwrap(),
        "released"
    );
    // Released: the output and a receipt that names both reviewers.
    let released = analyst.job(&job, 0).await.unwrap();
    assert_eq!(released.state, "released");
    analyst.job_output(&job).await.unwrap();
    let bytes = analyst.receipt_bytes(&job).await.unwrap();
    let receipt = Receipt::verify(&bytes, &analyst.keys().await.unwrap(), None).unwrap();
    let reviewers = receipt.body.reviewers.unwrap();
    assert_eq!(reviewers.len(), 2);
    assert_ne!(reviewers[0], reviewers[1]);
    // After the end, everyone sees both decisions.
    assert_eq!(analyst.job_review(&job).await.unwrap().decisions.len(), 2);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authors_never_review_and_one_rejection_or_change_request_stops_it() {
    let policies = reviewed_policies();
    let mut server = TestServer::start_in(policies.path(), |_| {}).await;
    server.admin.grant("lab-a", "enterprises").await.unwrap();
    let analyst = server.client(Role::Analyst, "lab-a").await;
    let module = analyst
        .upload_module(guest("district_stats"), None)
        .await
        .unwrap()
        .sha256;
    // An administrator's own job: not theirs to review, not in their queue.
    let author = server.client(Role::Admin, "platform").await;
    let own_module = author
        .upload_module(guest("district_stats"), None)
        .await
        .unwrap()
        .sha256;
    let own = aggregate_job(&author, &own_module, "enterprises", serde_json::json!({})).await;
    assert_eq!(own.state, "held");
    assert_eq!(
        author
            .decide(&own.id, "approve", "")
            .await
            .unwrap_err()
            .code(),
        Some("own-output")
    );
    assert!(
        author
            .review_queue()
            .await
            .unwrap()
            .iter()
            .all(|h| h.job_id != own.id)
    );
    assert!(
        server
            .admin
            .review_queue()
            .await
            .unwrap()
            .iter()
            .any(|h| h.job_id == own.id)
    );
    // One approval and one rejection: rejected, with the reason.
    let job = held_job(&analyst, &module).await;
    server.admin.decide(&job, "approve", "").await.unwrap();
    let reviewer = server.client(Role::Admin, "platform").await;
    assert_eq!(
        reviewer
            .decide(&job, "reject", "")
            .await
            .unwrap_err()
            .code(),
        Some("bad-decision"),
        "a rejection needs a reason"
    );
    assert_eq!(
        reviewer
            .decide(
                &job,
                "reject",
                "Mean head counts of small districts identify firms."
            )
            .await
            .unwrap(),
        "rejected"
    );
    let rejected = analyst.job(&job, 0).await.unwrap();
    assert_eq!(rejected.state, "rejected");
    assert!(rejected.category.unwrap().contains("identify firms"));
    assert_eq!(
        analyst.job_output(&job).await.unwrap_err().code(),
        Some("not-released")
    );
    assert_eq!(
        author.decide(&job, "approve", "").await.unwrap_err().code(),
        Some("review-ended")
    );
    // A change request returns it to the author with comments.
    let job = held_job(&analyst, &module).await;
    assert_eq!(
        server
            .admin
            .decide(&job, "request-changes", "Round counts to 5.")
            .await
            .unwrap(),
        "changes-requested"
    );
    let review = analyst.job_review(&job).await.unwrap();
    assert_eq!(review.state, "changes-requested");
    assert_eq!(review.decisions[0].comment, "Round counts to 5.");
    let ended = analyst.job(&job, 0).await.unwrap();
    assert_eq!(ended.state, "rejected");
    assert_eq!(
        ended.category.as_deref(),
        Some("changes-requested: Round counts to 5.")
    );
    // Non-admins cannot review.
    assert_eq!(
        analyst
            .decide(&job, "approve", "")
            .await
            .unwrap_err()
            .code(),
        Some("forbidden")
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_rule_holds_only_large_outputs() {
    let policies = policies_with("review = \"required\"\nreview_cells_over = 1000");
    let mut server = TestServer::start_in(policies.path(), |_| {}).await;
    server.admin.grant("lab-a", "enterprises").await.unwrap();
    let analyst = server.client(Role::Analyst, "lab-a").await;
    let module = analyst
        .upload_module(guest("district_stats"), None)
        .await
        .unwrap()
        .sha256;
    // Fifteen districts by three columns and one value: under the rule.
    let job = aggregate_job(&analyst, &module, "enterprises", serde_json::json!({})).await;
    assert_eq!(job.state, "released");
    server.stop().await.unwrap();
}

/// A restricted table of 40 firms in two sectors under `aggregate` with a
/// minimum group of 10: in sector a one firm holds 1,000 of 1,190, sector
/// b is twenty equal firms.
pub(crate) fn dominated_firms(dir: &std::path::Path) -> datasandbox::dataset::DatasetSource {
    use datasandbox::catalog::Manifest;
    use datasandbox::policy::PolicySet;
    use datasandbox::release::bind::job_table;
    // Sector a: one firm holds 1,000 of 1,190; sector b: twenty equal firms.
    let mut csv = String::from("firm,sector,revenue\nF000,a,1000\n");
    for i in 1..20 {
        csv.push_str(&format!("F{i:03},a,10\n"));
    }
    for i in 20..40 {
        csv.push_str(&format!("F{i:03},b,10\n"));
    }
    std::fs::write(dir.join("firms.csv"), csv).unwrap();
    std::fs::write(
        dir.join("firms.toml"),
        "id = \"firms\"\ntitle = \"t\"\ndomain = \"d\"\nsummary = \"s\"\nowner = \"o\"\nupdate_frequency = \"never\"\nclassification = \"restricted\"\nprivacy_unit = \"firm\"\njoin_keys = []\n\n[[columns]]\nname = \"firm\"\ntype = \"string\"\ndescription = \"id\"\nrole = \"identifier\"\n\n[[columns]]\nname = \"sector\"\ntype = \"string\"\ndescription = \"s\"\nrole = \"attribute\"\n\n[[columns]]\nname = \"revenue\"\ntype = \"int64\"\ndescription = \"r\"\nrole = \"sensitive\"\nbounds = [0, 100000]\n",
    )
    .unwrap();
    std::fs::create_dir(dir.join("policies")).unwrap();
    std::fs::write(
        dir.join("policies/firms.toml"),
        "dataset = \"firms\"\nmodes = [\"aggregate\"]\nmin_group_size = 10\n",
    )
    .unwrap();
    let manifest = Manifest::load(&dir.join("firms.toml")).unwrap();
    job_table(
        &manifest,
        &dir.join("firms.csv"),
        datasandbox::dataset::DataFormat::Csv,
        &PolicySet::load(&dir.join("policies"), None).unwrap(),
        true,
        &datasandbox::release::cell_key::RecordKeys::random(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dominance_check_flags_a_cell_one_unit_owns() {
    use datasandbox::query::QuerySession;
    let dir = tempfile::tempdir().unwrap();
    let table = dominated_firms(dir.path());
    let session = QuerySession::open(&[table], &Default::default())
        .await
        .unwrap();
    let by_sector = "SELECT sector, SUM(revenue) AS revenue FROM firms GROUP BY sector";
    assert_eq!(session.dominated_cells(by_sector).await.unwrap(), 1);
    // Counts have no contributions to dominate; the equal sector is clean.
    let counts = "SELECT sector, COUNT(*) AS firms FROM firms GROUP BY sector";
    assert_eq!(session.dominated_cells(counts).await.unwrap(), 0);
    let clean =
        "SELECT sector, SUM(revenue) AS revenue FROM firms WHERE sector = 'b' GROUP BY sector";
    assert_eq!(session.dominated_cells(clean).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_fails_leaves_the_decision_unrecorded() {
    let policies = reviewed_policies();
    let mut server = TestServer::start_in(policies.path(), |_| {}).await;
    server.admin.grant("lab-a", "enterprises").await.unwrap();
    let analyst = server.client(Role::Analyst, "lab-a").await;
    let reviewer_a = server.client(Role::Admin, "platform").await;
    let reviewer_b = server.client(Role::Admin, "platform").await;
    let module = analyst
        .upload_module(guest("district_stats"), None)
        .await
        .unwrap()
        .sha256;
    let job = held_job(&analyst, &module).await;
    assert_eq!(
        reviewer_a.decide(&job, "approve", "").await.unwrap(),
        "held"
    );
    // The job's row no longer says `held` (as if a crash had moved it):
    // the second approval's release fails, and with it the whole decision.
    sqlx::query("UPDATE jobs SET state = 'failed' WHERE id = ?")
        .bind(&job)
        .execute(server.service.store.pool())
        .await
        .unwrap();
    let entries_before = datasandbox::store::audit::entries(&server.service.store)
        .await
        .unwrap()
        .len();
    assert!(reviewer_b.decide(&job, "approve", "fine").await.is_err());
    let held: String = sqlx::query_scalar("SELECT state FROM held_outputs WHERE job_id = ?")
        .bind(&job)
        .fetch_one(server.service.store.pool())
        .await
        .unwrap();
    assert_eq!(held, "held", "the held output was not marked released");
    let decisions: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM reviews WHERE job_id = ?")
        .bind(&job)
        .fetch_one(server.service.store.pool())
        .await
        .unwrap();
    assert_eq!(decisions, 1, "the second decision was not recorded");
    let entries_after = datasandbox::store::audit::entries(&server.service.store)
        .await
        .unwrap()
        .len();
    assert_eq!(
        entries_before, entries_after,
        "no audit entry for a rolled-back decision"
    );
    // Put back, the same approval releases in one step.
    sqlx::query("UPDATE jobs SET state = 'held' WHERE id = ?")
        .bind(&job)
        .execute(server.service.store.pool())
        .await
        .unwrap();
    assert_eq!(
        reviewer_b.decide(&job, "approve", "fine").await.unwrap(),
        "released"
    );
    assert_eq!(analyst.job(&job, 0).await.unwrap().state, "released");
    server.stop().await.unwrap();
}
