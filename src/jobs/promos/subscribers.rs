//! `public.subscribers_restaurants` as a followed table: its rows are the promos job's
//! [`Subscription`]s, shared among the workers by `id`.

use std::sync::Arc;

use anyhow::{Result, bail};
use dataflows::promos::Subscription;

use crate::sources::postgres::{FollowedRow, Split};

impl FollowedRow for Subscription {
    const TABLE: &'static str = "public.subscribers_restaurants";
    const KEY: &'static str = "id";
    const COLUMNS: &'static [&'static str] = &["client_id", "restaurant_id"];
    const SPLIT: Split = Split::ByKey;
    const SOURCE: &'static str = "SubscribersSource";

    fn from_columns(values: &[Option<&str>]) -> Result<Self> {
        match values {
            [Some(client_id), Some(restaurant_id)] => Ok(Subscription {
                client_id: Arc::from(*client_id),
                restaurant_id: Arc::from(*restaurant_id),
            }),
            _ => bail!("{} row with a NULL client_id or restaurant_id", Self::TABLE),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_is_a_subscription_and_null_columns_are_refused() {
        let row = Subscription::from_columns(&[Some("c1"), Some("r1")]).expect("a row");
        assert_eq!((&*row.client_id, &*row.restaurant_id), ("c1", "r1"));
        assert!(Subscription::from_columns(&[Some("c1"), None]).is_err());
    }
}
