//! Where the test services are: `DISHFLOW_TEST_BROKERS`, `DISHFLOW_TEST_POSTGRES` (defaults:
//! the local services that `scripts/services.sh` starts).

use dishflow::kafka::KafkaArgs;

/// Kafka bootstrap servers of the test broker.
pub fn brokers() -> String {
    std::env::var("DISHFLOW_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// Base URL (no database) of the test Postgres server.
pub fn postgres_base() -> String {
    std::env::var("DISHFLOW_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// Kafka arguments for the test broker.
pub fn kafka() -> KafkaArgs {
    KafkaArgs {
        brokers: brokers(),
        properties: Vec::new(),
        property_file: None,
    }
}
