//! Criterion: decoding JSON lines into Arrow batches (the ingest client's hot
//! path), against a baseline measured in the same run: parsing the same lines
//! into `serde_json::Value` and nothing more. Quote the ratio.
//!
//! Run: cargo bench -p scuba-cli --bench decode

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use scuba::decode::BatchBuilder;

fn sample_lines(rows: usize) -> Vec<String> {
    (0..rows)
        .map(|i| {
            format!(
                r#"{{"id":{i},"time":{},"service":"svc{}","endpoint":"/p{}","status":{},"latency_ms":{}.5,"bytes":{},"region":"r{}","tags":["a","b{}"],"user_id":"u{}","ok":{}}}"#,
                1_700_000_000 + i / 10,
                i % 6,
                i % 5,
                if i % 20 == 0 { 500 } else { 200 },
                i % 400,
                i * 7 % 100_000,
                i % 4,
                i % 3,
                i % 5000,
                i % 20 != 0
            )
        })
        .collect()
}

fn decode(c: &mut Criterion) {
    let lines = sample_lines(8192);
    let mut group = c.benchmark_group("decode_8192_lines");
    group.throughput(Throughput::Elements(lines.len() as u64));
    group.bench_function(BenchmarkId::new("baseline_serde_json_value", 8192), |b| {
        b.iter(|| {
            for l in &lines {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                std::hint::black_box(v);
            }
        })
    });
    group.bench_function(BenchmarkId::new("batch_builder_to_arrow", 8192), |b| {
        b.iter(|| {
            let mut builder = BatchBuilder::new("events", "time", 0);
            for (i, l) in lines.iter().enumerate() {
                builder.push_json(i as u64 + 1, l).unwrap();
            }
            std::hint::black_box(builder.finish().unwrap());
        })
    });
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
