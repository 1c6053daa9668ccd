//! `cdm.tag_rules` as a followed table: the rules that tag users, followed by worker 0 (a
//! small table) and spread by the dataflow.

use anyhow::{Context, Result, bail};
use dataflows::orders::TagRule;

use crate::sources::postgres::{FollowedRow, Split};

impl FollowedRow for TagRule {
    const TABLE: &'static str = "cdm.tag_rules";
    const KEY: &'static str = "tag";
    const COLUMNS: &'static [&'static str] =
        &["tag", "category_name", "product_name", "min_orders"];
    const SPLIT: Split = Split::WorkerZero;
    const SOURCE: &'static str = "TagRulesSource";

    fn from_columns(values: &[Option<&str>]) -> Result<Self> {
        let [Some(tag), category, product, Some(min_orders)] = values else {
            bail!("{} row with a NULL tag or min_orders", Self::TABLE);
        };
        Ok(TagRule {
            tag: tag.to_string(),
            category: category.map(str::to_string),
            product: product.map(str::to_string),
            min_orders: min_orders
                .parse()
                .with_context(|| format!("{} min_orders {min_orders:?}", Self::TABLE))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_is_a_rule() {
        let rule = TagRule::from_columns(&[Some("pizza lover"), Some("Пицца"), None, Some("3")])
            .expect("a rule");
        assert_eq!(
            rule,
            TagRule {
                tag: "pizza lover".into(),
                category: Some("Пицца".into()),
                product: None,
                min_orders: 3,
            }
        );
        assert!(TagRule::from_columns(&[Some("x"), None, None, None]).is_err());
    }
}
