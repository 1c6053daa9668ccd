//! The hand-over from a table's snapshot to its change stream (see the module docs of
//! `sources::postgres`): which decoded transactions the snapshot already contains.

use std::collections::HashSet;

use anyhow::{Result, bail};

/// The transactions a snapshot already contains, for the hand-over to the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotPoint {
    /// WAL insert position read right after the snapshot was taken.
    pub lsn: u64,
    /// First xid the snapshot does not see (low 32 bits).
    pub xmax: u32,
    /// Xids in progress when the snapshot was taken (low 32 bits).
    pub xip: HashSet<u32>,
}

impl SnapshotPoint {
    /// Parses `pg_current_snapshot()` text (`xmin:xmax:xip,...`) and the WAL position.
    pub fn parse(snapshot: &str, lsn: u64) -> Result<Self> {
        let mut parts = snapshot.split(':');
        let (Some(_xmin), Some(xmax), Some(xip)) = (parts.next(), parts.next(), parts.next())
        else {
            bail!("unexpected snapshot {snapshot:?}");
        };
        // Full (64-bit) xids; decoding reports the low 32 bits.
        let low = |x: &str| -> Result<u32> { Ok(x.parse::<u64>()? as u32) };
        Ok(SnapshotPoint {
            lsn,
            xmax: low(xmax)?,
            xip: xip
                .split(',')
                .filter(|x| !x.is_empty())
                .map(low)
                .collect::<Result<_>>()?,
        })
    }

    /// Whether the transaction `xid`, committed at `commit_lsn`, is already in the snapshot.
    pub fn contains(&self, xid: u32, commit_lsn: u64) -> bool {
        // Past the snapshot's WAL position no transaction can be in it; this also keeps the
        // 32-bit comparison below from ever meeting xid wrap-around.
        commit_lsn < self.lsn
            && (xid.wrapping_sub(self.xmax) as i32) < 0
            && !self.xip.contains(&xid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_point_knows_which_transactions_it_contains() -> Result<()> {
        let s = SnapshotPoint::parse("100:105:101,103", 5000)?;
        assert_eq!(s.xmax, 105);
        assert!(s.contains(99, 4000), "committed before xmin");
        assert!(s.contains(102, 4000), "between, not in progress");
        assert!(!s.contains(101, 4000), "in progress at the snapshot");
        assert!(!s.contains(105, 4000), "at or after xmax");
        assert!(
            !s.contains(99, 5000),
            "commit after the snapshot's WAL position"
        );
        let wrapped = SnapshotPoint::parse(&format!("{0}:{0}:", (1u64 << 32) + 3), 10)?;
        assert!(
            wrapped.contains(u32::MAX, 5),
            "xid just before the wrap is older"
        );
        assert!(!wrapped.contains(3, 5));
        assert!(SnapshotPoint::parse("nonsense", 0).is_err());
        Ok(())
    }
}
