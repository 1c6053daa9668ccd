//! The promos job's campaign decoder (`dataflows::promos::parse_campaign`).
#![no_main]

use dataflows::promos::parse_campaign;
use dishflow_fuzz::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for value in values(data) {
        match parse_campaign(value) {
            Err(reject) => check_reject(&reject),
            Ok(campaign) => {
                for (text, what) in campaign.texts() {
                    check_storable(text, what);
                }
                // trigger_datetime_created (int4) is at least the start.
                assert!(i32::try_from(campaign.adv_campaign_datetime_start).is_ok());
                assert!(campaign.adv_campaign_datetime_end > campaign.adv_campaign_datetime_start);
                // Round trip: the campaign as JSON decodes to itself.
                let json = serde_json::to_vec(&campaign).expect("a campaign is JSON");
                assert_eq!(parse_campaign(Some(&json)).as_ref(), Ok(&campaign));
            }
        }
    }
});
