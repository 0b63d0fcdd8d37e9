//! `clients.*`: applications' bearer tokens and scopes, managed through the admin API.
//!
//! A token is generated here, returned once, and only its SHA-256 is stored. Every change is
//! put in force by reloading the shared [`ClientBook`](crate::access::clients::ClientBook),
//! so the listeners' next request sees it. Adding a client, rotating its token and widening a
//! scope (more keys, chains or methods, a higher or removed rate limit) need a second admin,
//! like adding an admin does: one admin alone can narrow or revoke access, never extend it. Clients from the config file are shown
//! but cannot be changed here.

use rand::RngCore;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::methods::{accepted, list_param, second_admin, str_param};
use super::{codes, AdminContext, AdminError, Done};
use crate::access::clients::{parse_scope, ClientScope};
use crate::config::{LimitConfig, ResponseShape};
use crate::store::{Decision, UserRecord};

/// A fresh 256-bit token (hex) and its SHA-256.
fn new_token() -> (Zeroizing<String>, [u8; 32]) {
    let mut raw = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(raw.as_mut_slice());
    let token = Zeroizing::new(hex::encode(raw.as_slice()));
    let hash = crate::access::token_hash(&token);
    (token, hash)
}

fn client_name(params: &Value) -> Result<&str, AdminError> {
    let name = str_param(params, "name")?;
    let valid = name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
    if !valid {
        return Err(AdminError::invalid(
            "name: 1-64 of letters, digits, - _ . @",
        ));
    }
    Ok(name)
}

fn rate_limit(params: &Value) -> Result<Option<LimitConfig>, AdminError> {
    match params.get("rate_limit") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| AdminError::invalid(format!("rate_limit: {e}"))),
    }
}

fn response(params: &Value) -> Result<Option<ResponseShape>, AdminError> {
    match params.get("response") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| AdminError::invalid(format!("response: {e}"))),
    }
}

fn validated(scope: ClientScope) -> Result<ClientScope, AdminError> {
    scope.validate().map_err(AdminError::invalid)?;
    Ok(scope)
}

/// Refuses names that belong to the config file: those change with the file only.
fn not_configured(ctx: &AdminContext, name: &str) -> Result<(), AdminError> {
    if ctx.clients.configured_names().contains(name) {
        return Err(AdminError::new(
            codes::REFUSED,
            "admin.config_client",
            format!("client {name:?} is defined in the config file; change it there"),
        ));
    }
    Ok(())
}

fn in_force(ctx: &AdminContext) -> Result<(), AdminError> {
    ctx.clients.load(&ctx.db).map_err(AdminError::internal)
}

fn scope_json(scope: &ClientScope) -> Result<String, AdminError> {
    serde_json::to_string(scope).map_err(AdminError::internal)
}

pub(super) async fn run(
    ctx: &AdminContext,
    user: &UserRecord,
    method: &str,
    params: &Value,
) -> Result<Done, AdminError> {
    match method {
        "clients.list" => list(ctx),
        "clients.add" => {
            let name = client_name(params)?;
            not_configured(ctx, name)?;
            let scope = validated(ClientScope {
                keys: list_param(params, "keys")?,
                chains: list_param(params, "chains")?,
                methods: list_param(params, "methods")?,
                rate_limit: rate_limit(params)?,
                response: response(params)?,
            })?;
            // Every new client is new access: a second admin must make the same request (the
            // token goes to whoever completes it). Also closes remove-then-add widening.
            if ctx.db.client(name).map_err(AdminError::internal)?.is_some() {
                return Err(AdminError::invalid(format!("client {name:?} exists")));
            }
            let action = format!("clients.add:{name}:{}", scope_json(&scope)?);
            if !second_admin(ctx, user, &action).await? {
                return pending(action, None, "a new client needs a second admin");
            }
            let (token, hash) = new_token();
            if !ctx
                .db
                .insert_client(name, &hash, &scope_json(&scope)?, &user.name)
                .map_err(AdminError::internal)?
            {
                return Err(AdminError::invalid(format!("client {name:?} exists")));
            }
            in_force(ctx)?;
            accepted(json!({
                "name": name,
                "token": token.as_str(),
                "token_sha256": hex::encode(hash),
                "scope": scope,
            }))
        }
        "clients.update" => update(ctx, user, params).await,
        "clients.rotate" => {
            let name = client_name(params)?;
            not_configured(ctx, name)?;
            if ctx.db.client(name).map_err(AdminError::internal)?.is_none() {
                return Err(AdminError::invalid(format!("no client {name:?}")));
            }
            // A new token is a working credential in the hands of whoever asks: two admins.
            // (To cut off a leaked token at once, one admin can `clients.remove`.)
            let action = format!("clients.rotate:{name}");
            if !second_admin(ctx, user, &action).await? {
                return pending(action, None, "a new token needs a second admin");
            }
            let (token, hash) = new_token();
            if !ctx
                .db
                .rotate_client_token(name, &hash, &user.name)
                .map_err(AdminError::internal)?
            {
                return Err(AdminError::invalid(format!("no client {name:?}")));
            }
            in_force(ctx)?;
            accepted(json!({
                "name": name,
                "token": token.as_str(),
                "token_sha256": hex::encode(hash),
            }))
        }
        "clients.remove" => {
            let name = client_name(params)?;
            not_configured(ctx, name)?;
            if !ctx.db.remove_client(name).map_err(AdminError::internal)? {
                return Err(AdminError::invalid(format!("no client {name:?}")));
            }
            in_force(ctx)?;
            accepted(json!({"removed": name}))
        }
        other => Err(AdminError::new(
            codes::METHOD_NOT_FOUND,
            "admin.unknown_method",
            format!("unknown method {other:?}"),
        )),
    }
}

/// The first admin's half of a two-admin client action.
fn pending(action: String, widens: Option<&[&str]>, why: &str) -> Result<Done, AdminError> {
    let mut result = json!({
        "status": "pending",
        "action": action,
        "reason": format!("{why} making the same request"),
    });
    if let Some(w) = widens {
        result["widens"] = json!(w);
    }
    Ok(Done {
        result,
        decision: Decision::Held,
        key: None,
    })
}

fn list(ctx: &AdminContext) -> Result<Done, AdminError> {
    let mut out = Vec::new();
    for row in ctx.db.clients().map_err(AdminError::internal)? {
        let scope = parse_scope(&row).map_err(AdminError::internal)?;
        out.push(json!({
            "name": row.name,
            "source": "admin",
            "scope": scope,
            "token_sha256": hex::encode(row.token_sha256),
            "created_ms": row.created_ms,
            "created_by": row.created_by,
            "updated_ms": row.updated_ms,
            "updated_by": row.updated_by,
        }));
    }
    out.extend(ctx.clients.configured());
    accepted(json!(out))
}

/// Replaces the parts of a scope given in `params` (`rate_limit: null` removes the limit).
async fn update(ctx: &AdminContext, user: &UserRecord, params: &Value) -> Result<Done, AdminError> {
    let name = client_name(params)?;
    not_configured(ctx, name)?;
    let row = ctx
        .db
        .client(name)
        .map_err(AdminError::internal)?
        .ok_or_else(|| AdminError::invalid(format!("no client {name:?}")))?;
    let old = parse_scope(&row).map_err(AdminError::internal)?;
    let mut new = old.clone();
    if params.get("keys").is_some() {
        new.keys = list_param(params, "keys")?;
    }
    if params.get("chains").is_some() {
        new.chains = list_param(params, "chains")?;
    }
    if params.get("methods").is_some() {
        new.methods = list_param(params, "methods")?;
    }
    if params.get("rate_limit").is_some() {
        new.rate_limit = rate_limit(params)?;
    }
    if params.get("response").is_some() {
        new.response = response(params)?;
    }
    let new = validated(new)?;
    let widens = old.widened_by(&new);
    if !widens.is_empty() {
        let action = format!("clients.update:{name}:{}", scope_json(&new)?);
        if !second_admin(ctx, user, &action).await? {
            return pending(
                action,
                Some(&widens),
                "widening a client's scope or limit needs a second admin",
            );
        }
    }
    if !ctx
        .db
        .update_client_scope(name, &scope_json(&new)?, &user.name)
        .map_err(AdminError::internal)?
    {
        return Err(AdminError::invalid(format!("no client {name:?}")));
    }
    in_force(ctx)?;
    accepted(json!({"name": name, "scope": new, "widened": widens}))
}
