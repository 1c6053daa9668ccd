//! `dishflow produce`: valid test data for the jobs.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use dataflows::promos::Campaign;

use crate::cli::ProducePromosArgs;
use crate::kafka::ensure_topic;
use crate::sinks::SinkWriter;
use crate::sinks::kafka::{Encoder, KafkaMessage, KafkaWriter};

/// The seed example's UUID with its last group replaced by `n` (12 decimal digits):
/// `uuid_like(426614174000)` is `123e4567-e89b-12d3-a456-426614174000`.
pub fn uuid_like(n: u64) -> String {
    format!("123e4567-e89b-12d3-a456-{:012}", n % 1_000_000_000_000)
}

/// The SPEC's example fields for campaign number `n` of restaurant number `r`.
fn campaign(n: u64, r: u64, start: i64, end: i64, created: i64) -> Campaign {
    Campaign {
        restaurant_id: uuid_like(426_614_174_000 + r),
        adv_campaign_id: uuid_like(426_614_174_000 + n),
        adv_campaign_content: if n == 3 {
            "first campaign".to_string()
        } else {
            format!("campaign {n}")
        },
        adv_campaign_owner: "Ivanov Ivan Ivanovich".to_string(),
        adv_campaign_owner_contact: "iiivanov@restaurant.ru".to_string(),
        adv_campaign_datetime_start: start,
        adv_campaign_datetime_end: end,
        datetime_created: created,
    }
}

/// Campaigns as JSON values, keyed by campaign id.
struct CampaignEncoder;

impl Encoder<Campaign> for CampaignEncoder {
    fn encode(&self, c: &Campaign, _: u64, _: isize) -> Result<Option<KafkaMessage>> {
        Ok(Some(KafkaMessage {
            key: Some(c.adv_campaign_id.clone().into_bytes()),
            value: Some(serde_json::to_vec(c)?),
            headers: Vec::new(),
        }))
    }
}

/// Produces `args.count` valid campaigns, confirming every delivery.
pub fn promos(args: &ProducePromosArgs) -> Result<()> {
    ensure_topic(&args.kafka, &args.topic, args.partitions)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("clock before 1970")?
        .as_secs() as i64;
    let (start, end, created) = if args.seed_times {
        (1_659_203_516, 2_659_207_116, 1_659_131_516)
    } else {
        let start = now + args.start_in;
        (start, start + args.valid_for, now)
    };
    let mut writer = KafkaWriter::new(&args.kafka, &args.topic, CampaignEncoder)?;
    let restaurants = args.restaurants.max(1);
    let batch: Vec<(Campaign, u64, isize)> = (0..args.count)
        .map(|i| {
            let c = campaign(
                args.first_campaign + i,
                i % restaurants,
                start,
                end,
                created,
            );
            (c, 0, 1)
        })
        .collect();
    for chunk in batch.chunks(100_000) {
        writer.write(chunk)?;
    }
    tracing::info!(brokers = %args.kafka.brokers, topic = %args.topic, count = args.count, "produced");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_seed_example() {
        assert_eq!(
            uuid_like(426_614_174_000),
            "123e4567-e89b-12d3-a456-426614174000"
        );
        let c = campaign(3, 0, 1, 2, 0);
        assert_eq!(c.adv_campaign_id, "123e4567-e89b-12d3-a456-426614174003");
        assert_eq!(c.restaurant_id, "123e4567-e89b-12d3-a456-426614174000");
        assert_eq!(c.adv_campaign_content, "first campaign");
    }
}
