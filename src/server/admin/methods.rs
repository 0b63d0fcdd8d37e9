//! The admin methods themselves. The caller is already authenticated and its role checked.

use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::{codes, AdminContext, AdminError, Done};
use crate::access::kill::ALL_KEYS;
use crate::access::roles::Role;
use crate::access::totp;
use crate::approvals::VoteError;
use crate::store::{AuditFilter, Decision, UserRecord};

pub(super) fn accepted(result: Value) -> Result<Done, AdminError> {
    Ok(Done {
        result,
        decision: Decision::Accepted,
        key: None,
    })
}

pub(super) fn str_param<'a>(params: &'a Value, name: &str) -> Result<&'a str, AdminError> {
    params
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| AdminError::invalid(format!("missing string parameter {name:?}")))
}

pub(super) fn list_param(params: &Value, name: &str) -> Result<Vec<String>, AdminError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .filter(|s| !s.is_empty() && !s.contains(','))
                    .map(str::to_owned)
                    .ok_or_else(|| AdminError::invalid(format!("{name}: expected names")))
            })
            .collect(),
        Some(_) => Err(AdminError::invalid(format!("{name}: expected a list"))),
    }
}

/// The key a `keys.*` call targets: `{"key": "k"}` or `{"all": true}`.
fn key_target(params: &Value) -> Result<String, AdminError> {
    let all = params.get("all").and_then(Value::as_bool).unwrap_or(false);
    match (params.get("key").and_then(Value::as_str), all) {
        (Some(_), true) => Err(AdminError::invalid("give either key or all, not both")),
        (Some(k), false) => keyguard_chain::KeyId::new(k)
            .map(|k| k.to_string())
            .map_err(|e| AdminError::invalid(e.to_string())),
        (None, true) => Ok(ALL_KEYS.to_owned()),
        (None, false) => Err(AdminError::invalid("missing key (or all = true)")),
    }
}

/// Two-admin rule: the first admin's call is recorded and held; the same call by a second,
/// different admin within the proposal window carries it out.
pub(super) async fn second_admin(
    ctx: &AdminContext,
    user: &UserRecord,
    action: &str,
) -> Result<bool, AdminError> {
    let (db, action_owned, name, ttl) = (
        ctx.db.clone(),
        action.to_owned(),
        user.name.clone(),
        ctx.proposal_ttl_ms(),
    );
    let others = tokio::task::spawn_blocking(move || db.propose(&action_owned, &name, ttl))
        .await
        .map_err(AdminError::internal)?
        .map_err(AdminError::internal)?;
    if others.is_empty() {
        return Ok(false);
    }
    ctx.db
        .clear_proposals(action)
        .map_err(AdminError::internal)?;
    Ok(true)
}

pub(super) fn held(action: &str, key: Option<String>) -> Result<Done, AdminError> {
    Ok(Done {
        result: json!({
            "status": "pending",
            "action": action,
            "reason": "a second admin must make the same request",
        }),
        decision: Decision::Held,
        key,
    })
}

pub(super) async fn run(
    ctx: &AdminContext,
    user: &UserRecord,
    method: &str,
    params: &Value,
) -> Result<Done, AdminError> {
    if method.starts_with("clients.") {
        return super::clients::run(ctx, user, method, params).await;
    }
    if method.starts_with("watermarks.") || method.starts_with("bitcoin.") {
        return super::chain_state::run(ctx, user, method, params).await;
    }
    match method {
        "users.list" => {
            let users = ctx.db.users().map_err(AdminError::internal)?;
            let list: Vec<_> = users
                .iter()
                .map(|u| {
                    json!({"name": u.name, "roles": u.roles, "groups": u.groups,
                        "locked_until_ms": u.locked_until_ms})
                })
                .collect();
            accepted(json!(list))
        }
        "users.add" => users_add(ctx, user, params).await,
        "users.remove" => {
            let name = str_param(params, "name")?;
            if name == user.name {
                return Err(AdminError::new(
                    codes::REFUSED,
                    "admin.self_remove",
                    "an admin cannot remove itself",
                ));
            }
            let target = ctx
                .db
                .user(name)
                .map_err(AdminError::internal)?
                .ok_or_else(|| AdminError::invalid(format!("no user {name:?}")))?;
            // Removing an admin needs a second one: otherwise one admin could remove the
            // only other admin and then act alone.
            if target.roles.iter().any(|r| r == "admin") {
                let action = format!("users.remove:{name}");
                if !second_admin(ctx, user, &action).await? {
                    return held(&action, None);
                }
            }
            if !ctx.db.remove_user(name).map_err(AdminError::internal)? {
                return Err(AdminError::invalid(format!("no user {name:?}")));
            }
            accepted(json!({"removed": name}))
        }
        "keys.status" => {
            let (all, keys) = ctx.kill.status();
            accepted(json!({
                "all_disabled": all,
                "disabled": keys,
                "kill_file_present": ctx.kill.kill_file_present(),
            }))
        }
        "keys.disable" => {
            let key = key_target(params)?;
            ctx.kill
                .disable(&key, &user.name)
                .await
                .map_err(AdminError::internal)?;
            Ok(Done {
                result: json!({"disabled": key}),
                decision: Decision::Accepted,
                key: Some(key),
            })
        }
        "keys.enable" => {
            let key = key_target(params)?;
            if key == ALL_KEYS && ctx.kill.kill_file_present() {
                return Err(AdminError::new(
                    codes::REFUSED,
                    "admin.kill_file",
                    "the emergency kill file is present; remove it first",
                ));
            }
            let action = format!("keys.enable:{key}");
            if !second_admin(ctx, user, &action).await? {
                return held(&action, Some(key));
            }
            ctx.kill
                .enable(&key, &user.name)
                .map_err(AdminError::internal)?;
            Ok(Done {
                result: json!({"enabled": key}),
                decision: Decision::Accepted,
                key: Some(key),
            })
        }
        "approvals.list" => {
            // Bounded: one page (`limit`, default 100, at most 500) after the id `after`.
            let limit = match params.get("limit") {
                None | Some(serde_json::Value::Null) => 100,
                Some(v) => v
                    .as_u64()
                    .filter(|n| (1..=crate::approvals::MAX_PAGE as u64).contains(n))
                    .ok_or_else(|| AdminError::invalid("limit: 1 to 500"))?
                    as usize,
            };
            let after = match params.get("after") {
                None | Some(serde_json::Value::Null) => None,
                Some(v) => Some(
                    v.as_str()
                        .filter(|s| s.len() <= 64)
                        .ok_or_else(|| AdminError::invalid("after: an approval id"))?
                        .to_owned(),
                ),
            };
            let list = ctx
                .approvals
                .pending_page(crate::store::now_ms(), after.as_deref(), limit)
                .map_err(AdminError::internal)?;
            accepted(json!(list))
        }
        "approvals.approve" | "approvals.reject" => {
            let id = str_param(params, "id")?;
            let approve = method == "approvals.approve";
            let (book, id_owned, voter) = (ctx.approvals.clone(), id.to_owned(), user.clone());
            let voted = tokio::task::spawn_blocking(move || {
                book.vote(&id_owned, &voter, approve, crate::store::now_ms())
            })
            .await
            .map_err(AdminError::internal)?;
            match voted {
                Ok(a) => Ok(Done {
                    key: Some(a.key_id.clone()),
                    result: json!(a),
                    decision: Decision::Accepted,
                }),
                Err(VoteError::Store(e)) => Err(AdminError::internal(e)),
                Err(e) => {
                    let rule = match e {
                        VoteError::SelfApproval => "approval.self",
                        VoteError::NotInGroup(_) => "approval.group",
                        VoteError::AlreadyVoted(_) => "approval.duplicate_vote",
                        VoteError::Expired(_) => "approval.expired",
                        _ => "approval.not_pending",
                    };
                    Err(AdminError::new(codes::REFUSED, rule, e.to_string()))
                }
            }
        }
        "audit.query" => {
            let filter: AuditFilter =
                serde_json::from_value(params.get("filter").cloned().unwrap_or_else(|| json!({})))
                    .map_err(|e| AdminError::invalid(format!("filter: {e}")))?;
            let rows = ctx.db.query_audit(&filter).map_err(AdminError::internal)?;
            accepted(json!(rows))
        }
        "audit.stats" => {
            // Counts per hour since `since_ms` (at most 31 days back), for the console's charts.
            let since = params
                .get("since_ms")
                .and_then(Value::as_i64)
                .ok_or_else(|| AdminError::invalid("since_ms: unix ms"))?;
            let counts = ctx
                .audit_counter
                .counts(&ctx.db, since, crate::store::now_ms())
                .map_err(AdminError::internal)?;
            let validators = ctx.db.validator_tips().map_err(AdminError::internal)?;
            let latencies = ctx
                .db
                .approval_latencies(since)
                .map_err(AdminError::internal)?;
            accepted(json!({
                "counts": counts,
                "validators": validators,
                "approval_latency_ms": latencies,
            }))
        }
        "audit.verify" => match ctx.db.verify_audit() {
            Ok(v) => accepted(json!({"rows": v.rows, "head": hex::encode(v.head)})),
            Err(e) => Err(AdminError::new(
                codes::REFUSED,
                "audit.broken",
                e.to_string(),
            )),
        },
        "policy.reload" => {
            let (tx, rx) = oneshot::channel();
            ctx.reload
                .send(tx)
                .await
                .map_err(|_| AdminError::internal("daemon is stopping"))?;
            match rx.await {
                Ok(Ok(())) => accepted(json!({"reloaded": true})),
                Ok(Err(e)) => Err(AdminError::new(codes::REFUSED, "admin.reload", e)),
                Err(_) => Err(AdminError::internal("reload was not answered")),
            }
        }
        other => Err(AdminError::new(
            codes::METHOD_NOT_FOUND,
            "admin.unknown_method",
            format!("unknown method {other:?}"),
        )),
    }
}

/// Adds a user and returns its enrolment URI (shown once, to the admin who completes the
/// action). Adding an admin or an approver needs two admins.
async fn users_add(
    ctx: &AdminContext,
    user: &UserRecord,
    params: &Value,
) -> Result<Done, AdminError> {
    let name = str_param(params, "name")?;
    let valid_name = name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
    if !valid_name {
        return Err(AdminError::invalid(
            "name: 1-64 of letters, digits, - _ . @",
        ));
    }
    let roles = list_param(params, "roles")?;
    if roles.is_empty() || roles.iter().any(|r| Role::parse(r).is_none()) {
        return Err(AdminError::invalid(
            "roles: one or more of admin, operator, approver, auditor",
        ));
    }
    let groups = list_param(params, "groups")?;
    // An admin or an approver needs a second admin: one admin alone creating approver
    // accounts (and receiving their enrolment) would be the whole M-of-N quorum.
    if roles.iter().any(|r| r == "admin" || r == "approver") {
        let action = format!("users.add:{name}:{}:{}", roles.join(","), groups.join(","));
        if !second_admin(ctx, user, &action).await? {
            return held(&action, None);
        }
    }
    let secret = totp::new_secret().map_err(AdminError::internal)?;
    let uri = totp::enrolment_uri(&secret, name, &ctx.settings.issuer)
        .map_err(|e| AdminError::invalid(e.to_string()))?;
    if !ctx
        .vault
        .add_user(&ctx.db, name, &roles, &groups, &secret)
        .map_err(AdminError::internal)?
    {
        return Err(AdminError::invalid(format!("user {name:?} exists")));
    }
    accepted(json!({"name": name, "roles": roles, "groups": groups, "otpauth_uri": uri.as_str()}))
}
