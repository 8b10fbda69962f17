//! The column types a table may hold, how they map to Arrow, and the one
//! widening rule: an int64 column that meets a float becomes float64.
//!
//! Every table has a time column stored as `Timestamp(Microsecond, None)`
//! (UTC). Strings travel from the client as plain `Utf8` (offsets and bytes,
//! the compact form) and leaves keep them as `Utf8View` (16-byte views, short
//! strings inline), the form DataFusion filters, groups and compares fastest;
//! both are the one user-facing type `string`. A table's schema is the union
//! of the columns its rows brought, in order of first appearance; a column
//! a leaf never saw reads as NULL.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::error::{Error, Result};
use crate::limits::NAME_BYTES_MAX;

/// Name of the time column unless the user picks another.
pub const TIME_COLUMN_DEFAULT: &str = "time";

/// The types a column may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ColumnType {
    Int64,
    Float64,
    Bool,
    Utf8,
    /// A list of strings (Scuba's "set of strings"): `List<Utf8>`.
    Tags,
    /// Microseconds since the Unix epoch, UTC.
    Timestamp,
}

impl ColumnType {
    /// The Arrow type a client sends a column of this type as.
    pub fn to_arrow(self) -> DataType {
        match self {
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::Bool => DataType::Boolean,
            ColumnType::Utf8 => DataType::Utf8,
            ColumnType::Tags => tags_type(),
            ColumnType::Timestamp => time_type(),
        }
    }

    /// The Arrow type a leaf keeps a column of this type as (and so the type
    /// queries see): [`ColumnType::to_arrow`] but strings as views.
    pub fn stored(self) -> DataType {
        match self {
            ColumnType::Utf8 => DataType::Utf8View,
            other => other.to_arrow(),
        }
    }

    pub fn from_arrow(data_type: &DataType) -> Option<ColumnType> {
        match data_type {
            DataType::Int64 => Some(ColumnType::Int64),
            DataType::Float64 => Some(ColumnType::Float64),
            DataType::Boolean => Some(ColumnType::Bool),
            DataType::Utf8 | DataType::Utf8View => Some(ColumnType::Utf8),
            DataType::Timestamp(TimeUnit::Microsecond, None) => Some(ColumnType::Timestamp),
            DataType::List(field) if field.data_type() == &DataType::Utf8 => Some(ColumnType::Tags),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ColumnType::Int64 => "int64",
            ColumnType::Float64 => "float64",
            ColumnType::Bool => "bool",
            ColumnType::Utf8 => "string",
            ColumnType::Tags => "tags",
            ColumnType::Timestamp => "timestamp",
        }
    }

    /// The type a column of type `self` has after it meets a value of type
    /// `other`, or `None` when the two conflict.
    pub fn unify(self, other: ColumnType) -> Option<ColumnType> {
        use ColumnType::*;
        match (self, other) {
            (a, b) if a == b => Some(a),
            (Int64, Float64) | (Float64, Int64) => Some(Float64),
            _ => None,
        }
    }
}

/// `List<Utf8>` with a nullable item field named `item`, as Arrow builders make it.
pub fn tags_type() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
}

pub fn time_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, None)
}

/// Checks a table or column name: non-empty, bounded, no control characters.
pub fn check_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > NAME_BYTES_MAX {
        Some("longer than 256 bytes")
    } else if name.chars().any(char::is_control) {
        Some("contains control characters")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidName {
            name: name.chars().take(64).collect(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Unifies two schemas of the same table: the union of their columns, in
/// order of first appearance, with int64/float64 widened to float64 (and a
/// string met in both forms kept as views). Returns the offending column on
/// a conflict.
pub fn unify_schemas(table: &str, a: &Schema, b: &Schema) -> Result<SchemaRef> {
    let mut fields: Vec<Field> = a.fields().iter().map(|f| f.as_ref().clone()).collect();
    for fb in b.fields() {
        match fields.iter_mut().find(|f| f.name() == fb.name()) {
            Some(fa) => {
                if fa.data_type() == fb.data_type() {
                    continue;
                }
                let unified = ColumnType::from_arrow(fa.data_type())
                    .zip(ColumnType::from_arrow(fb.data_type()))
                    .and_then(|(ta, tb)| ta.unify(tb));
                match unified {
                    Some(t) => *fa = Field::new(fa.name(), t.stored(), true),
                    None => {
                        return Err(Error::TypeConflict {
                            table: table.to_string(),
                            column: fb.name().clone(),
                            expected: type_name(fa.data_type()),
                            found: type_name(fb.data_type()),
                        })
                    }
                }
            }
            None => fields.push(Field::new(fb.name(), fb.data_type().clone(), true)),
        }
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// A user-facing name for an Arrow type.
pub fn type_name(data_type: &DataType) -> String {
    match ColumnType::from_arrow(data_type) {
        Some(t) => t.name().to_string(),
        None => data_type.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_meets_float_widens_to_float() {
        assert_eq!(
            ColumnType::Int64.unify(ColumnType::Float64),
            Some(ColumnType::Float64)
        );
        assert_eq!(
            ColumnType::Float64.unify(ColumnType::Int64),
            Some(ColumnType::Float64)
        );
    }

    #[test]
    fn a_string_sent_plain_and_kept_as_views_is_one_string_column() {
        let sent = Schema::new(vec![Field::new("s", DataType::Utf8, true)]);
        let kept = Schema::new(vec![Field::new("s", DataType::Utf8View, true)]);
        for (a, b) in [(&sent, &kept), (&kept, &sent)] {
            let u = unify_schemas("t", a, b).unwrap();
            assert_eq!(u.field(0).data_type(), &DataType::Utf8View);
        }
        assert_eq!(type_name(&DataType::Utf8View), "string");
    }

    #[test]
    fn string_meets_int_conflicts() {
        assert_eq!(ColumnType::Utf8.unify(ColumnType::Int64), None);
        assert_eq!(ColumnType::Bool.unify(ColumnType::Float64), None);
    }

    #[test]
    fn unified_schema_keeps_first_appearance_order_and_names_the_conflict() {
        let a = Schema::new(vec![Field::new("x", DataType::Int64, true)]);
        let b = Schema::new(vec![
            Field::new("y", DataType::Utf8, true),
            Field::new("x", DataType::Float64, true),
        ]);
        let u = unify_schemas("t", &a, &b).unwrap();
        assert_eq!(u.field(0).name(), "x");
        assert_eq!(u.field(0).data_type(), &DataType::Float64);
        assert_eq!(u.field(1).name(), "y");

        let c = Schema::new(vec![Field::new("x", DataType::Utf8, true)]);
        let err = unify_schemas("t", &a, &c).unwrap_err().to_string();
        assert!(err.contains("column `x`"), "{err}");
        assert!(err.contains("table `t`"), "{err}");
    }
}
