//! CloudWatch Embedded Metric Format: one document per metric line, its units.

use ::metrics::Unit;
use serde_json::{json, Map, Value};

use super::NAMESPACE;

/// A key's labels, as (name, value) pairs: the extra dimensions of its EMF document.
pub(super) type Labels = Vec<(String, String)>;

/// One metric of an EMF document: its name, value and CloudWatch unit.
pub(super) type EmfMetric = (String, Value, &'static str);

/// One EMF document: the metrics named in `_aws.CloudWatchMetrics` and their values at the top
/// level, beside the dimensions (`Worker`, `Queue`, then the labels).
pub(super) fn emf_document(
    timestamp_ms: u64,
    worker: &str,
    queue: &str,
    labels: &[(String, String)],
    metrics: Vec<EmfMetric>,
    totals: Option<Value>,
) -> Value {
    let mut dimensions = vec!["Worker".to_owned(), "Queue".to_owned()];
    dimensions.extend(labels.iter().map(|(k, _)| k.clone()));
    let definitions: Vec<Value> = metrics
        .iter()
        .map(|(name, _, unit)| json!({"Name": name, "Unit": unit}))
        .collect();
    let mut doc = Map::new();
    doc.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [dimensions],
                "Metrics": definitions,
            }],
        }),
    );
    doc.insert("Worker".into(), worker.into());
    doc.insert("Queue".into(), queue.into());
    for (key, value) in labels {
        doc.insert(key.clone(), value.clone().into());
    }
    for (name, value, _) in metrics {
        doc.insert(name, value);
    }
    if let Some(totals) = totals {
        doc.insert("totals".into(), totals);
    }
    Value::Object(doc)
}

/// CloudWatch's name of a unit.
pub(super) fn cloudwatch_unit(unit: &Unit) -> &'static str {
    match unit {
        Unit::Count => "Count",
        Unit::Percent => "Percent",
        Unit::Seconds => "Seconds",
        Unit::Milliseconds => "Milliseconds",
        Unit::Microseconds => "Microseconds",
        Unit::Nanoseconds => "None",
        Unit::Tebibytes => "Terabytes",
        Unit::Gibibytes => "Gigabytes",
        Unit::Mebibytes => "Megabytes",
        Unit::Kibibytes => "Kilobytes",
        Unit::Bytes => "Bytes",
        Unit::TerabitsPerSecond => "Terabits/Second",
        Unit::GigabitsPerSecond => "Gigabits/Second",
        Unit::MegabitsPerSecond => "Megabits/Second",
        Unit::KilobitsPerSecond => "Kilobits/Second",
        Unit::BitsPerSecond => "Bits/Second",
        Unit::CountPerSecond => "Count/Second",
    }
}
