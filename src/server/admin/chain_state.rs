//! Chain-state repairs on the admin API, each needing two admins (the first call is held, the
//! same call by a second admin within the proposal window carries it out) and audited like
//! every admin call:
//!
//! - `watermarks.repair {chain_id, key, height}`: lowers a CometBFT watermark a node pushed
//!   ahead of the chain, never to or below the highest height this instance released.
//! - `bitcoin.release_claim {key, outpoint, txid}`: lets other transactions spend an outpoint
//!   that transaction `txid` claimed in the conflict guard (a frozen coin).
//! - `bitcoin.transactions {key?, txid?, limit?}`: the transactions keyguard signed, with the
//!   raw transaction to broadcast (read-only, one admin, operator or auditor).

use std::str::FromStr;

use keyguard_bitcoin::bitcoin::{OutPoint, Txid};
use serde_json::{json, Value};

use super::methods::{accepted, held, second_admin, str_param};
use super::{codes, AdminContext, AdminError, Done};
use crate::store::{Decision, UserRecord, WatermarkError};

pub(super) async fn run(
    ctx: &AdminContext,
    user: &UserRecord,
    method: &str,
    params: &Value,
) -> Result<Done, AdminError> {
    match method {
        "watermarks.repair" => repair(ctx, user, params).await,
        "bitcoin.release_claim" => release_claim(ctx, user, params).await,
        "bitcoin.transactions" => {
            let key = params.get("key").and_then(Value::as_str);
            let txid = params.get("txid").and_then(Value::as_str);
            let limit = params
                .get("limit")
                .and_then(Value::as_u64)
                .unwrap_or(20)
                .min(200) as usize;
            let rows = ctx
                .db
                .signed_bitcoin_txs(key, txid, limit)
                .map_err(AdminError::internal)?;
            accepted(json!(rows))
        }
        other => Err(AdminError::new(
            codes::METHOD_NOT_FOUND,
            "admin.unknown_method",
            format!("unknown method {other:?}"),
        )),
    }
}

async fn repair(ctx: &AdminContext, user: &UserRecord, params: &Value) -> Result<Done, AdminError> {
    let chain = str_param(params, "chain_id")?;
    let key = str_param(params, "key")?;
    let height = params
        .get("height")
        .and_then(Value::as_i64)
        .filter(|h| *h >= 1)
        .ok_or_else(|| AdminError::invalid("height: a positive integer"))?;
    let action = format!("watermarks.repair:{chain}:{key}:{height}");
    if !second_admin(ctx, user, &action).await? {
        return held(&action, Some(key.to_owned()));
    }
    let (db, c, k, by) = (
        ctx.db.clone(),
        chain.to_owned(),
        key.to_owned(),
        user.name.clone(),
    );
    let done = tokio::task::spawn_blocking(move || db.repair_watermark(&c, &k, height, &by))
        .await
        .map_err(AdminError::internal)?;
    match done {
        Ok(old) => Ok(Done {
            result: json!({"chain_id": chain, "key": key, "from_height": old, "height": height}),
            decision: Decision::Accepted,
            key: Some(key.to_owned()),
        }),
        Err(WatermarkError::Store(e)) => Err(AdminError::internal(e)),
        Err(e) => Err(AdminError::new(
            codes::REFUSED,
            "admin.watermark_repair",
            e.to_string(),
        )),
    }
}

async fn release_claim(
    ctx: &AdminContext,
    user: &UserRecord,
    params: &Value,
) -> Result<Done, AdminError> {
    let key = str_param(params, "key")?;
    let outpoint = OutPoint::from_str(str_param(params, "outpoint")?)
        .map_err(|e| AdminError::invalid(format!("outpoint: {e} (txid:vout)")))?
        .to_string();
    let txid = Txid::from_str(str_param(params, "txid")?)
        .map_err(|e| AdminError::invalid(format!("txid: {e}")))?
        .to_string();
    let action = format!("bitcoin.release_claim:{key}:{outpoint}:{txid}");
    if !second_admin(ctx, user, &action).await? {
        return held(&action, Some(key.to_owned()));
    }
    let fresh = ctx
        .db
        .release_bitcoin_claim(key, &outpoint, &txid, &user.name)
        .map_err(AdminError::internal)?;
    Ok(Done {
        result: json!({"key": key, "outpoint": outpoint, "txid": txid, "released": true,
            "already_released": !fresh}),
        decision: Decision::Accepted,
        key: Some(key.to_owned()),
    })
}
