//! The values that cross the store boundary, one type for both engines.
//!
//! Every integer is a signed 64-bit value (SQLite's INTEGER, PostgreSQL's BIGINT: no 32-bit id
//! that can overflow), text is UTF-8, bytes are BLOB/BYTEA. Booleans are stored as 0/1 integers
//! so one SQL text reads the same on both engines.

use std::error::Error as StdError;

use bytes::BytesMut;
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type};

use crate::store::StoreError;

/// One parameter or column value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Val {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

/// Builds a parameter slice: `vals![name, 3_i64, &bytes[..]]`.
macro_rules! vals {
    ($($v:expr),* $(,)?) => { &[$($crate::store::db::Val::from($v)),*][..] };
}
pub(crate) use vals;

impl From<i64> for Val {
    fn from(v: i64) -> Self {
        Val::Int(v)
    }
}
impl From<i32> for Val {
    fn from(v: i32) -> Self {
        Val::Int(v.into())
    }
}
impl From<u8> for Val {
    fn from(v: u8) -> Self {
        Val::Int(v.into())
    }
}
impl From<i16> for Val {
    fn from(v: i16) -> Self {
        Val::Int(v.into())
    }
}
impl From<u32> for Val {
    fn from(v: u32) -> Self {
        Val::Int(v.into())
    }
}
impl From<bool> for Val {
    fn from(v: bool) -> Self {
        Val::Int(v.into())
    }
}
impl From<&str> for Val {
    fn from(v: &str) -> Self {
        Val::Text(v.to_owned())
    }
}
impl From<String> for Val {
    fn from(v: String) -> Self {
        Val::Text(v)
    }
}
impl From<&String> for Val {
    fn from(v: &String) -> Self {
        Val::Text(v.clone())
    }
}
impl From<&[u8]> for Val {
    fn from(v: &[u8]) -> Self {
        Val::Blob(v.to_vec())
    }
}
impl From<Vec<u8>> for Val {
    fn from(v: Vec<u8>) -> Self {
        Val::Blob(v)
    }
}
impl From<&Vec<u8>> for Val {
    fn from(v: &Vec<u8>) -> Self {
        Val::Blob(v.clone())
    }
}
impl From<&[u8; 32]> for Val {
    fn from(v: &[u8; 32]) -> Self {
        Val::Blob(v.to_vec())
    }
}
impl<T: Into<Val>> From<Option<T>> for Val {
    fn from(v: Option<T>) -> Self {
        v.map_or(Val::Null, Into::into)
    }
}

/// A value read from a column.
pub(crate) trait FromVal: Sized {
    fn from_val(v: &Val) -> Option<Self>;
}

impl FromVal for i64 {
    fn from_val(v: &Val) -> Option<Self> {
        match v {
            Val::Int(i) => Some(*i),
            _ => None,
        }
    }
}
impl FromVal for i32 {
    fn from_val(v: &Val) -> Option<Self> {
        i64::from_val(v).and_then(|i| i32::try_from(i).ok())
    }
}
impl FromVal for u32 {
    fn from_val(v: &Val) -> Option<Self> {
        i64::from_val(v).and_then(|i| u32::try_from(i).ok())
    }
}
impl FromVal for bool {
    fn from_val(v: &Val) -> Option<Self> {
        i64::from_val(v).map(|i| i != 0)
    }
}
impl FromVal for String {
    fn from_val(v: &Val) -> Option<Self> {
        match v {
            Val::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
}
impl FromVal for Vec<u8> {
    fn from_val(v: &Val) -> Option<Self> {
        match v {
            Val::Blob(b) => Some(b.clone()),
            _ => None,
        }
    }
}
impl<T: FromVal> FromVal for Option<T> {
    fn from_val(v: &Val) -> Option<Self> {
        match v {
            Val::Null => Some(None),
            other => T::from_val(other).map(Some),
        }
    }
}

/// One result row.
#[derive(Clone, Debug, Default)]
pub(crate) struct Row(pub(crate) Vec<Val>);

impl Row {
    /// Column `i` as `T`; a missing column or another type is [`StoreError::Corrupt`]-like.
    pub(crate) fn get<T: FromVal>(&self, i: usize) -> Result<T, StoreError> {
        let v = self
            .0
            .get(i)
            .ok_or_else(|| StoreError::Unavailable(format!("result has no column {i}")))?;
        T::from_val(v).ok_or_else(|| {
            StoreError::Unavailable(format!(
                "column {i} holds {v:?}, not a {}",
                std::any::type_name::<T>()
            ))
        })
    }
}

impl rusqlite::ToSql for Val {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(match self {
            Val::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Val::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            Val::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Val::Blob(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        })
    }
}

impl Val {
    pub(crate) fn from_sqlite(v: rusqlite::types::ValueRef<'_>) -> Val {
        use rusqlite::types::ValueRef;
        match v {
            ValueRef::Null => Val::Null,
            ValueRef::Integer(i) => Val::Int(i),
            // No column is REAL; say what was there rather than guess.
            ValueRef::Real(f) => Val::Text(f.to_string()),
            ValueRef::Text(t) => Val::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Val::Blob(b.to_vec()),
        }
    }
}

type BoxErr = Box<dyn StdError + Sync + Send>;

impl ToSql for Val {
    /// Encodes for the parameter type PostgreSQL inferred: integers adapt to INT2/4/8 and BOOL
    /// (out of range is an error, never a wrap), text to TEXT-like types.
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxErr> {
        match self {
            Val::Null => Ok(IsNull::Yes),
            Val::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::BOOL => (*i != 0).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR => i.to_string().as_str().to_sql(ty, out),
                _ => Err(format!("integer parameter for a {ty} column").into()),
            },
            Val::Text(s) => s.as_str().to_sql(ty, out),
            Val::Blob(b) => b.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

impl<'a> FromSql<'a> for Val {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxErr> {
        Ok(match *ty {
            Type::INT8 => Val::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => Val::Int(i32::from_sql(ty, raw)?.into()),
            Type::INT2 => Val::Int(i16::from_sql(ty, raw)?.into()),
            Type::BOOL => Val::Int(bool::from_sql(ty, raw)?.into()),
            Type::BYTEA => Val::Blob(<Vec<u8>>::from_sql(ty, raw)?),
            Type::TEXT | Type::VARCHAR | Type::NAME | Type::BPCHAR => {
                Val::Text(String::from_sql(ty, raw)?)
            }
            _ => return Err(format!("unsupported column type {ty} (cast it to TEXT)").into()),
        })
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxErr> {
        Ok(Val::Null)
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}
