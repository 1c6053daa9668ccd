//! Job 1, `promos`: restaurant campaigns ⋈ subscriptions → notification drafts.
//!
//! ```text
//!  raw Kafka records ──decode──┬── Err ─────────────────────────────► dead letters
//!                              └── Ok(CampaignMessage)
//!                                     │ exchange by adv_campaign_id
//!                                     │ campaigns_in_force (Lifecycle): latest version wins,
//!                                     │   +1 at max(arrival, start), −1 at max(arrival, end),
//!                                     │   a replacement retracts the old version at arrival
//!                                     ▼
//!                        arrange by restaurant_id ─┐
//!                                                  ├─ join ──► Draft { campaign, client_id }
//!  subscribers_restaurants ── distinct pairs ──────┘
//!     arranged by restaurant_id
//! ```
//!
//! The rules, by name:
//! * [`parse_campaign`]: what a valid campaign message is; everything else is a [`Reject`]
//!   — including a campaign whose drafts are larger than the notification topic takes
//!   ([`decode`]).
//! * [`Lifecycle`]: *insert at start, retract at end*, per `adv_campaign_id` — the version
//!   in force exists in `[adv_campaign_datetime_start, adv_campaign_datetime_end)`, never
//!   before its arrival; a newer version replaces it from its arrival on; state is dropped
//!   once every version has ended.
//! * [`drafts`]: one draft per (campaign, client) while the campaign is valid and the client
//!   subscribes to its restaurant; duplicate subscription rows count once.
//! * [`Draft::notification`]: the exact output format, with `trigger_datetime_created` being
//!   the logical second at which the draft came into existence.

use std::hash::BuildHasher;
use std::sync::Arc;

use differential_dataflow::VecCollection;
use differential_dataflow::hashable::Hashable;
use hashbrown::{DefaultHashBuilder, HashTable};
use serde::{Deserialize, Serialize};
use smallvec::{SmallVec, smallvec};
use timely::dataflow::Stream;

pub use crate::decode::Reject;
use crate::decode::{decode_records, integer, object, storable, string};
use crate::{
    DeadLetter, Diff, RawRecord, Replayable, Retained, Retention, Schedule, Time, replay_state,
    secs_to_time,
};

/// A promotion campaign, as published on the promos topic (all eight fields are required).
///
/// Every live campaign is kept in the job's state, so it is kept small: the four texts
/// other than the restaurant are one allocation (read them with [`Campaign::adv_campaign_id`]
/// and its siblings, or all fields at once with [`Campaign::fields`]; build one from
/// [`CampaignFields`]). It (de)serializes as the message's JSON object.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Campaign {
    /// Restaurant running the campaign; joins with the subscriptions. Shared (`Arc<str>`):
    /// it is the key under which the campaign's updates are arranged for the join.
    pub restaurant_id: Arc<str>,
    /// `adv_campaign_id`, `adv_campaign_content`, `adv_campaign_owner` and
    /// `adv_campaign_owner_contact`, one after the other.
    texts: Box<str>,
    /// Where the id, the content and the owner end in `texts`.
    ends: [usize; 3],
    /// Start of validity, unix seconds (inclusive).
    pub adv_campaign_datetime_start: i64,
    /// End of validity, unix seconds (exclusive).
    pub adv_campaign_datetime_end: i64,
    /// When the campaign version was created, unix seconds.
    pub datetime_created: i64,
}

/// A campaign's fields, borrowed, in the order of the SPEC: what a [`Campaign`] is made
/// from and read as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct CampaignFields<'a> {
    /// Restaurant running the campaign.
    pub restaurant_id: &'a str,
    /// Identifies the campaign.
    pub adv_campaign_id: &'a str,
    /// Text of the promotion.
    pub adv_campaign_content: &'a str,
    /// Person responsible for the campaign.
    pub adv_campaign_owner: &'a str,
    /// Contact of the owner.
    pub adv_campaign_owner_contact: &'a str,
    /// Start of validity, unix seconds (inclusive).
    pub adv_campaign_datetime_start: i64,
    /// End of validity, unix seconds (exclusive).
    pub adv_campaign_datetime_end: i64,
    /// When the campaign version was created, unix seconds.
    pub datetime_created: i64,
}

impl From<CampaignFields<'_>> for Campaign {
    fn from(f: CampaignFields<'_>) -> Self {
        let (id, content, owner) = (
            f.adv_campaign_id,
            f.adv_campaign_content,
            f.adv_campaign_owner,
        );
        let texts = [id, content, owner, f.adv_campaign_owner_contact].concat();
        let ends = [
            id.len(),
            id.len() + content.len(),
            id.len() + content.len() + owner.len(),
        ];
        Campaign {
            restaurant_id: Arc::from(f.restaurant_id),
            texts: texts.into_boxed_str(),
            ends,
            adv_campaign_datetime_start: f.adv_campaign_datetime_start,
            adv_campaign_datetime_end: f.adv_campaign_datetime_end,
            datetime_created: f.datetime_created,
        }
    }
}

impl std::fmt::Debug for Campaign {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.fields().fmt(f)
    }
}

impl Serialize for Campaign {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.fields().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Campaign {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Typed::deserialize(deserializer).map(|t| Campaign::from(t.fields()))
    }
}

/// One row of `subscribers_restaurants`: a client has a restaurant among their favourites.
///
/// Its ids are shared (`Arc<str>`): the followed table's rows, the arrangements that keep
/// the distinct pairs and every draft of the client hold the same two allocations (a copy
/// per arrangement was most of a large table's memory).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Subscription {
    /// The subscribing client.
    pub client_id: Arc<str>,
    /// The restaurant subscribed to.
    pub restaurant_id: Arc<str>,
}

/// A notification draft: one campaign for one subscribed client.
///
/// The campaign is shared (`Arc`) by every draft of it: the join makes one draft per
/// subscriber, and a draft is moved, sorted and buffered many times on its way to the sink;
/// a copy of the campaign's five strings each time was most of the job's memory traffic.
/// (Between processes it is serialized whole.)
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Draft {
    /// The campaign, as valid when the draft exists.
    pub campaign: Arc<Campaign>,
    /// The client to notify (shared with the subscription it comes from).
    pub client_id: Arc<str>,
}

/// The notification message and feedback row, field for field in the order of the SPEC
/// (a campaign's [`CampaignFields`] with the client between the end and the creation time,
/// which is why it does not embed them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification<'a> {
    /// See [`Campaign::restaurant_id`].
    pub restaurant_id: &'a str,
    /// See [`Campaign::adv_campaign_id`].
    pub adv_campaign_id: &'a str,
    /// See [`Campaign::adv_campaign_content`].
    pub adv_campaign_content: &'a str,
    /// See [`Campaign::adv_campaign_owner`].
    pub adv_campaign_owner: &'a str,
    /// See [`Campaign::adv_campaign_owner_contact`].
    pub adv_campaign_owner_contact: &'a str,
    /// See [`Campaign::adv_campaign_datetime_start`].
    pub adv_campaign_datetime_start: i64,
    /// See [`Campaign::adv_campaign_datetime_end`].
    pub adv_campaign_datetime_end: i64,
    /// The notified client.
    pub client_id: &'a str,
    /// See [`Campaign::datetime_created`].
    pub datetime_created: i64,
    /// Unix second at which the draft came into existence in the job's logical time.
    pub trigger_datetime_created: i64,
}

impl Draft {
    /// The Kafka key of the draft: `<adv_campaign_id>:<client_id>`.
    pub fn key(&self) -> String {
        let (campaign, client) = (self.campaign.adv_campaign_id(), &self.client_id);
        let mut key = String::with_capacity(campaign.len() + 1 + client.len());
        key.push_str(campaign);
        key.push(':');
        key.push_str(client);
        key
    }

    /// A hash of the draft's key (campaign, client): what routes every version of a draft
    /// to one writer.
    pub fn route(&self) -> u64 {
        (self.campaign.adv_campaign_id(), &*self.client_id).hashed()
    }

    /// The notification for this draft, which came into existence at logical time `time`.
    pub fn notification(&self, time: Time) -> Notification<'_> {
        self.campaign
            .notification(&self.client_id, crate::time_to_secs(time))
    }
}

impl Campaign {
    /// Identifies the campaign.
    pub fn adv_campaign_id(&self) -> &str {
        &self.texts[..self.ends[0]]
    }

    /// Text of the promotion.
    pub fn adv_campaign_content(&self) -> &str {
        &self.texts[self.ends[0]..self.ends[1]]
    }

    /// Person responsible for the campaign.
    pub fn adv_campaign_owner(&self) -> &str {
        &self.texts[self.ends[1]..self.ends[2]]
    }

    /// Contact of the owner.
    pub fn adv_campaign_owner_contact(&self) -> &str {
        &self.texts[self.ends[2]..]
    }

    /// All the campaign's fields.
    pub fn fields(&self) -> CampaignFields<'_> {
        CampaignFields {
            restaurant_id: &self.restaurant_id,
            adv_campaign_id: self.adv_campaign_id(),
            adv_campaign_content: self.adv_campaign_content(),
            adv_campaign_owner: self.adv_campaign_owner(),
            adv_campaign_owner_contact: self.adv_campaign_owner_contact(),
            adv_campaign_datetime_start: self.adv_campaign_datetime_start,
            adv_campaign_datetime_end: self.adv_campaign_datetime_end,
            datetime_created: self.datetime_created,
        }
    }

    /// The campaign's text fields with their names, in the order of the SPEC.
    pub fn texts(&self) -> [(&str, &'static str); 5] {
        [
            (&*self.restaurant_id, "restaurant_id"),
            (self.adv_campaign_id(), "adv_campaign_id"),
            (self.adv_campaign_content(), "adv_campaign_content"),
            (self.adv_campaign_owner(), "adv_campaign_owner"),
            (
                self.adv_campaign_owner_contact(),
                "adv_campaign_owner_contact",
            ),
        ]
    }

    /// The notification of this campaign for `client_id`, triggered at unix second
    /// `trigger`.
    pub fn notification<'a>(&'a self, client_id: &'a str, trigger: i64) -> Notification<'a> {
        Notification {
            restaurant_id: &self.restaurant_id,
            adv_campaign_id: self.adv_campaign_id(),
            adv_campaign_content: self.adv_campaign_content(),
            adv_campaign_owner: self.adv_campaign_owner(),
            adv_campaign_owner_contact: self.adv_campaign_owner_contact(),
            adv_campaign_datetime_start: self.adv_campaign_datetime_start,
            adv_campaign_datetime_end: self.adv_campaign_datetime_end,
            client_id,
            datetime_created: self.datetime_created,
            trigger_datetime_created: trigger,
        }
    }
}

/// The JSON of a notification without its strings' contents: the field names, quotes and
/// punctuation (246 bytes) and the four integers at their longest (20 characters each).
const NOTIFICATION_JSON_FRAME: usize = 246 + 4 * 20;

impl Notification<'_> {
    /// The notification as JSON (the SPEC's format), in a buffer allocated once at about
    /// its final size (growing it by doubling from empty was half the cost of encoding).
    pub fn to_json(&self) -> serde_json::Result<Vec<u8>> {
        let strings = [
            self.restaurant_id,
            self.adv_campaign_id,
            self.adv_campaign_content,
            self.adv_campaign_owner,
            self.adv_campaign_owner_contact,
            self.client_id,
        ];
        let size = NOTIFICATION_JSON_FRAME + strings.iter().map(|s| s.len()).sum::<usize>();
        let mut json = Vec::with_capacity(size);
        serde_json::to_writer(&mut json, self)?;
        Ok(json)
    }
}

/// A campaign message whose eight fields are all there with their types: what nearly every
/// message is, read straight into its fields (no map of JSON values first).
#[derive(Deserialize)]
struct Typed<'a> {
    #[serde(borrow)]
    restaurant_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    adv_campaign_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    adv_campaign_content: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    adv_campaign_owner: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    adv_campaign_owner_contact: std::borrow::Cow<'a, str>,
    adv_campaign_datetime_start: i64,
    adv_campaign_datetime_end: i64,
    datetime_created: i64,
}

impl Typed<'_> {
    fn fields(&self) -> CampaignFields<'_> {
        CampaignFields {
            restaurant_id: &self.restaurant_id,
            adv_campaign_id: &self.adv_campaign_id,
            adv_campaign_content: &self.adv_campaign_content,
            adv_campaign_owner: &self.adv_campaign_owner,
            adv_campaign_owner_contact: &self.adv_campaign_owner_contact,
            adv_campaign_datetime_start: self.adv_campaign_datetime_start,
            adv_campaign_datetime_end: self.adv_campaign_datetime_end,
            datetime_created: self.datetime_created,
        }
    }
}

/// The campaign of a well-formed message: a UTF-8 JSON object (not an array, which serde
/// would also read into a struct) with every field of its type, none twice. `None` for
/// anything else, which [`parse_campaign`] then reads field by field to say what is wrong.
fn typed_campaign(value: Option<&[u8]>) -> Option<Campaign> {
    let text = std::str::from_utf8(value?).ok()?;
    if !text.trim_start().starts_with('{') {
        return None;
    }
    let t: Typed<'_> = serde_json::from_str(text).ok()?;
    Some(Campaign::from(t.fields()))
}

/// Decodes one campaign message value. Unknown extra fields are ignored.
pub fn parse_campaign(value: Option<&[u8]>) -> Result<Campaign, Reject> {
    let campaign = match typed_campaign(value) {
        Some(campaign) => {
            for (text, name) in campaign.texts() {
                storable(text, name)?;
            }
            campaign
        }
        None => parse_fields(value)?,
    };
    validate(campaign)
}

/// The rules across a campaign's fields.
fn validate(campaign: Campaign) -> Result<Campaign, Reject> {
    // `trigger_datetime_created` (int4) is at least the start, so the start must fit an int4.
    if i32::try_from(campaign.adv_campaign_datetime_start).is_err() {
        return Err(Reject::OutOfRange("adv_campaign_datetime_start"));
    }
    if campaign.adv_campaign_datetime_end <= campaign.adv_campaign_datetime_start {
        return Err(Reject::EndNotAfterStart);
    }
    Ok(campaign)
}

/// Reads a campaign field by field from the message's JSON object: the first field missing,
/// null or of another type is the rejection.
fn parse_fields(value: Option<&[u8]>) -> Result<Campaign, Reject> {
    let obj = &object(value)?;
    // In the SPEC's order: the first field that is wrong is the rejection.
    let restaurant_id = string(obj, "restaurant_id", "restaurant_id")?;
    let adv_campaign_id = string(obj, "adv_campaign_id", "adv_campaign_id")?;
    let content = string(obj, "adv_campaign_content", "adv_campaign_content")?;
    let owner = string(obj, "adv_campaign_owner", "adv_campaign_owner")?;
    let contact = string(
        obj,
        "adv_campaign_owner_contact",
        "adv_campaign_owner_contact",
    )?;
    let fields = CampaignFields {
        restaurant_id: &restaurant_id,
        adv_campaign_id: &adv_campaign_id,
        adv_campaign_content: &content,
        adv_campaign_owner: &owner,
        adv_campaign_owner_contact: &contact,
        adv_campaign_datetime_start: integer(
            obj,
            "adv_campaign_datetime_start",
            "adv_campaign_datetime_start",
        )?,
        adv_campaign_datetime_end: integer(
            obj,
            "adv_campaign_datetime_end",
            "adv_campaign_datetime_end",
        )?,
        datetime_created: integer(obj, "datetime_created", "datetime_created")?,
    };
    Ok(Campaign::from(fields))
}

/// A decoded campaign message with its position in the topic: versions of one campaign are
/// ordered by `datetime_created`, then by arrival (logical time, partition, offset).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CampaignMessage {
    /// The campaign version the message carries.
    pub campaign: Campaign,
    /// Partition it was read from.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
}

/// Splits raw promo records into decoded campaign messages and dead letters. `room` is
/// the most bytes of key and value a notification message may have: a campaign whose
/// drafts are larger (`too_large:draft`) would never reach the topic.
pub fn decode<'s>(
    raw: VecCollection<'s, Time, RawRecord, Diff>,
    room: usize,
) -> (
    VecCollection<'s, Time, CampaignMessage, Diff>,
    VecCollection<'s, Time, DeadLetter, Diff>,
) {
    decode_records(raw, move |record| {
        let campaign = parse_campaign(record.value.as_deref())?;
        if !fits(&campaign, room) {
            return Err(Reject::TooLarge("draft"));
        }
        Ok(CampaignMessage {
            campaign,
            partition: record.partition,
            offset: record.offset,
        })
    })
}

/// Whether the campaign's smallest draft takes at most `room` bytes of key and value. Most
/// campaigns are far smaller than a topic's limit: they are let through by a bound (every
/// byte of their strings escaped at its longest, `\u00XX`) without encoding them.
fn fits(campaign: &Campaign, room: usize) -> bool {
    let bytes: usize = campaign.texts().iter().map(|(text, _)| text.len()).sum();
    let bound = NOTIFICATION_JSON_FRAME + 6 * bytes + campaign.adv_campaign_id().len() + 1;
    bound <= room || smallest_draft(campaign) <= room
}

/// The key and value bytes of the campaign's smallest draft (an empty client id), its
/// trigger time given the most digits an int4 has.
pub fn smallest_draft(campaign: &Campaign) -> usize {
    let notification = campaign.notification("", i64::from(i32::MIN));
    let value = notification.to_json().map_or(usize::MAX, |v| v.len());
    // The key: `<adv_campaign_id>:`.
    value.saturating_add(campaign.adv_campaign_id().len() + 1)
}

/// The version of one campaign currently in force.
#[derive(Clone, Debug)]
struct Current {
    campaign: Arc<Campaign>,
    /// (arrival time, partition, offset) of the version in force: with its
    /// `datetime_created`, the order in which versions replace each other.
    arrival: (Time, i32, i64),
    /// When every version seen so far has ended: the state can be forgotten then.
    forget_at: Time,
    /// Per partition, the first offset of a version seen: replaying from there rebuilds
    /// this state. Nearly always one partition: kept inline.
    first: SmallVec<[(i32, i64); 1]>,
}

impl Current {
    fn order(&self) -> (i64, Time, i32, i64) {
        let (t, partition, offset) = self.arrival;
        (self.campaign.datetime_created, t, partition, offset)
    }
}

/// The lifecycle of campaigns, keyed by `adv_campaign_id`: which version is in force, and
/// when each version is valid. Pure state machine; [`campaigns_in_force`] runs it.
///
/// * A message for an unknown id starts the campaign: valid from `max(arrival, start)` to
///   `max(arrival, end)` (nothing at all when it arrives after its end).
/// * A newer version (greater `datetime_created`; on a tie, the later arrival) replaces the
///   one in force at its arrival time `t`: the old version's remaining validity is
///   retracted (its scheduled end is cancelled) and the new one's is scheduled, so a new end
///   moves the retraction. Identical content changes nothing; an older version is ignored.
/// * State is kept until every version seen of the campaign has ended, then forgotten, so
///   memory is bounded by the campaigns that are live, not by all that ever existed.
///
/// It also knows, per partition, the oldest message it still depends on ([`retained`]):
/// replaying the topic from there, all at one logical time, rebuilds the same state.
///
/// [`retained`]: Lifecycle::retained
///
/// Memory per remembered campaign is its body (shared with the collection downstream) and
/// one table entry: the table finds a campaign by the id inside its version in force, so
/// the id is not stored again as a key. The entries are boxed: the table's slots (a power
/// of two of them, up to twice the campaigns, and both the old and the new set while it
/// grows) are then a pointer each, not the whole entry.
#[derive(Default)]
pub struct Lifecycle {
    current: HashTable<Box<Current>>,
    hasher: DefaultHashBuilder,
    /// Campaigns (by their id) to look at when the frontier reaches a time (their
    /// `forget_at` when scheduled). The version scheduled is kept until then, even if a
    /// newer one replaced it: at most until that version has ended.
    expiry: Schedule<Arc<Campaign>>,
    /// The `first` positions of every remembered campaign.
    positions: Retained,
}

/// Emits the validity of `campaign` as seen from logical time `t`: `diff` at
/// `max(t, start)`, `-diff` at `max(t, end)`; nothing if that interval is empty.
fn validity(
    campaign: &Arc<Campaign>,
    t: Time,
    diff: Diff,
    emit: &mut impl FnMut(Arc<Campaign>, Time, Diff),
) {
    let start = secs_to_time(campaign.adv_campaign_datetime_start).max(t);
    let end = secs_to_time(campaign.adv_campaign_datetime_end).max(t);
    if start < end {
        emit(Arc::clone(campaign), start, diff);
        emit(Arc::clone(campaign), end, -diff);
    }
}

impl Replayable for Lifecycle {
    type Message = CampaignMessage;
    type Output = Arc<Campaign>;

    fn route(message: &CampaignMessage) -> u64 {
        message.campaign.adv_campaign_id().hashed()
    }

    fn apply(
        &mut self,
        time: Time,
        messages: Vec<CampaignMessage>,
        emit: &mut impl FnMut(Arc<Campaign>, Time, Diff),
    ) {
        self.arrive(time, messages, emit);
    }

    fn expire(&mut self, time: Time) {
        Lifecycle::expire(self, time);
    }

    fn retained(&self) -> Vec<(i32, i64)> {
        self.positions.oldest()
    }
}

impl Lifecycle {
    /// Applies the messages that arrived at logical time `t`, emitting the changes of the
    /// valid-campaigns collection as `(campaign, time, diff)` with `time >= t`.
    pub fn arrive(
        &mut self,
        t: Time,
        mut messages: Vec<CampaignMessage>,
        emit: &mut impl FnMut(Arc<Campaign>, Time, Diff),
    ) {
        let order = |m: &CampaignMessage| (m.campaign.datetime_created, t, m.partition, m.offset);
        messages.sort_by_key(order);
        let hasher = &self.hasher;
        let hash = |id: &str| hasher.hash_one(id);
        for message in messages {
            let order = order(&message);
            let end = secs_to_time(message.campaign.adv_campaign_datetime_end);
            let position = (message.partition, message.offset);
            let id = message.campaign.adv_campaign_id();
            let found = self
                .current
                .find_mut(hash(id), |c| c.campaign.adv_campaign_id() == id);
            let (forget_at, campaign) = match found {
                None if end <= t => continue, // ended before it arrived: nothing to remember
                None => {
                    let campaign = Arc::new(message.campaign);
                    validity(&campaign, t, 1, emit);
                    self.positions.insert(position);
                    self.current.insert_unique(
                        hash(campaign.adv_campaign_id()),
                        Box::new(Current {
                            campaign: Arc::clone(&campaign),
                            arrival: (t, position.0, position.1),
                            forget_at: end,
                            first: smallvec![position],
                        }),
                        |c| hash(c.campaign.adv_campaign_id()),
                    );
                    (end, campaign)
                }
                Some(current) => {
                    match current.first.iter_mut().find(|(p, _)| *p == position.0) {
                        Some(first) if first.1 <= position.1 => {}
                        Some(first) => {
                            self.positions.remove(first);
                            self.positions.insert(position);
                            *first = position;
                        }
                        None => {
                            self.positions.insert(position);
                            current.first.push(position);
                        }
                    }
                    if order > current.order() {
                        if *current.campaign != message.campaign {
                            let campaign = Arc::new(message.campaign);
                            validity(&current.campaign, t, -1, emit);
                            validity(&campaign, t, 1, emit);
                            current.campaign = campaign;
                        }
                        current.arrival = (t, position.0, position.1);
                    }
                    if end <= current.forget_at {
                        continue;
                    }
                    current.forget_at = end;
                    (end, Arc::clone(&current.campaign))
                }
            };
            self.expiry.add(forget_at, campaign);
        }
    }

    /// Forgets the campaigns all of whose versions have ended at or before `time` (every
    /// message up to `time` having been applied).
    pub fn expire(&mut self, time: Time) {
        let current = &mut self.current;
        let positions = &mut self.positions;
        let hasher = &self.hasher;
        self.expiry.take_until(time, |_, scheduled| {
            let id = scheduled.adv_campaign_id();
            if let Ok(entry) =
                current.find_entry(hasher.hash_one(id), |c| c.campaign.adv_campaign_id() == id)
                && entry.get().forget_at <= time
            {
                let (gone, _) = entry.remove();
                for position in &gone.first {
                    positions.remove(position);
                }
            }
        });
    }

    /// Per partition, the offset of the oldest message the remembered state depends on.
    pub fn retained(&self) -> Vec<(i32, i64)> {
        self.positions.oldest()
    }

    /// Number of campaigns remembered.
    pub fn len(&self) -> usize {
        self.current.len()
    }

    /// Whether no campaign is remembered.
    pub fn is_empty(&self) -> bool {
        self.current.is_empty()
    }
}

/// The campaigns in force and valid, as a collection: each campaign version exists while
/// it is the version in force and valid (see [`Lifecycle`]). Messages are routed by
/// `adv_campaign_id`, and each worker applies them in logical-time order once the input
/// frontier has passed their time.
pub fn campaigns_in_force<'s>(
    messages: VecCollection<'s, Time, CampaignMessage, Diff>,
) -> VecCollection<'s, Time, Arc<Campaign>, Diff> {
    campaigns_and_retention(messages).0
}

/// [`campaigns_in_force`], and each worker's [`Retention`] as a stream.
pub fn campaigns_and_retention<'s>(
    messages: VecCollection<'s, Time, CampaignMessage, Diff>,
) -> crate::WithRetention<'s, Arc<Campaign>> {
    replay_state(messages, "CampaignLifecycle", Lifecycle::default())
}

/// Notification drafts: the campaigns in force joined with the *distinct* subscriptions of
/// their restaurant. The result is a set: each draft has multiplicity one while it exists.
pub fn drafts<'s>(
    messages: VecCollection<'s, Time, CampaignMessage, Diff>,
    subscriptions: VecCollection<'s, Time, Subscription, Diff>,
) -> VecCollection<'s, Time, Draft, Diff> {
    drafts_and_retention(messages, subscriptions).0
}

/// [`drafts`], and the lifecycle's [`Retention`] (what a restart must replay).
pub fn drafts_and_retention<'s>(
    messages: VecCollection<'s, Time, CampaignMessage, Diff>,
    subscriptions: VecCollection<'s, Time, Subscription, Diff>,
) -> (
    VecCollection<'s, Time, Draft, Diff>,
    Stream<'s, Time, Vec<Retention>>,
) {
    let (campaigns, retention) = campaigns_and_retention(messages);
    let campaigns = campaigns
        .map(|campaign| (Arc::clone(&campaign.restaurant_id), campaign))
        .arrange_by_key_named("CampaignsByRestaurant");
    let drafts = subscriptions
        .map(|s| (s.restaurant_id, s.client_id))
        // Duplicate rows for the same pair are one subscription.
        .threshold_named("DistinctSubscriptions", |_, count| Diff::from(*count > 0))
        .arrange_by_key_named("SubscribersByRestaurant")
        .join_core(campaigns, |_restaurant, client_id, campaign| {
            Some(Draft {
                campaign: Arc::clone(campaign),
                client_id: Arc::clone(client_id),
            })
        });
    (drafts, retention)
}

#[cfg(test)]
mod tests {
    use super::*;
    use differential_dataflow::AsCollection;
    use timely::dataflow::operators::capture::Extract;
    use timely::dataflow::operators::{Capture, ToStream};

    fn campaign(id: &str, restaurant: &str, start: i64, end: i64) -> Campaign {
        Campaign::from(CampaignFields {
            restaurant_id: restaurant,
            adv_campaign_id: id,
            adv_campaign_content: "first campaign",
            adv_campaign_owner: "Ivanov Ivan Ivanovich",
            adv_campaign_owner_contact: "iiivanov@restaurant.ru",
            adv_campaign_datetime_start: start,
            adv_campaign_datetime_end: end,
            datetime_created: 1_659_131_516,
        })
    }

    fn sub(client: &str, restaurant: &str) -> Subscription {
        Subscription {
            client_id: client.into(),
            restaurant_id: restaurant.into(),
        }
    }

    fn message(campaign: Campaign, offset: i64) -> CampaignMessage {
        CampaignMessage {
            campaign,
            partition: 0,
            offset,
        }
    }

    /// Runs a [`Lifecycle`] over messages arriving at the given times (in that order),
    /// expiring up to each arrival; returns the consolidated output and the state size.
    fn run_lifecycle(
        arrivals: Vec<(Time, Campaign)>,
        until: Time,
    ) -> (Vec<(Campaign, Time, Diff)>, usize) {
        let mut lifecycle = Lifecycle::default();
        let mut out = Vec::new();
        for (offset, (t, campaign)) in arrivals.into_iter().enumerate() {
            lifecycle.expire(t.saturating_sub(1));
            lifecycle.arrive(
                t,
                vec![message(campaign, offset as i64)],
                &mut |c, at, d| out.push((((*c).clone(), at), d)),
            );
        }
        lifecycle.expire(until);
        differential_dataflow::consolidation::consolidate(&mut out);
        let out = out.into_iter().map(|((c, t), d)| (c, t, d)).collect();
        (out, lifecycle.len())
    }

    fn version(c: &Campaign, created: i64, content: &str, end: i64) -> Campaign {
        Campaign::from(CampaignFields {
            datetime_created: created,
            adv_campaign_content: content,
            adv_campaign_datetime_end: end,
            ..c.fields()
        })
    }

    #[test]
    fn a_newer_version_replaces_the_old_one_from_its_arrival() {
        let v1 = campaign("c1", "r1", 10, 20);
        let v2 = version(&v1, v1.datetime_created + 1, "second", 20);
        let (out, _) = run_lifecycle(vec![(11_000, v1.clone()), (15_000, v2.clone())], 0);
        assert_eq!(
            out,
            vec![
                (v1.clone(), 11_000, 1),
                (v1, 15_000, -1),
                (v2.clone(), 15_000, 1),
                (v2, 20_000, -1)
            ]
        );
    }

    #[test]
    fn older_and_identical_versions_change_nothing() {
        let v1 = campaign("c1", "r1", 10, 20);
        let older = version(&v1, v1.datetime_created - 1, "older", 30);
        let (out, _) = run_lifecycle(
            vec![(11_000, v1.clone()), (12_000, older), (13_000, v1.clone())],
            0,
        );
        assert_eq!(out, vec![(v1.clone(), 11_000, 1), (v1, 20_000, -1)]);
    }

    #[test]
    fn on_equal_creation_time_the_later_message_wins() {
        let v1 = campaign("c1", "r1", 10, 20);
        let v2 = version(&v1, v1.datetime_created, "corrected", 20);
        let (out, _) = run_lifecycle(vec![(11_000, v1.clone()), (12_000, v2.clone())], 0);
        let mut expected = vec![
            (v1.clone(), 11_000, 1),
            (v1, 12_000, -1),
            (v2.clone(), 12_000, 1),
            (v2, 20_000, -1),
        ];
        expected.sort();
        assert_eq!(out, expected);
        // Both in one batch: the later offset wins, the first never appears.
        let v1 = campaign("c2", "r1", 10, 20);
        let v2 = version(&v1, v1.datetime_created, "corrected", 20);
        let mut lifecycle = Lifecycle::default();
        let mut out = Vec::new();
        lifecycle.arrive(
            11_000,
            vec![message(v2.clone(), 8), message(v1, 7)],
            &mut |c, t, d| out.push((((*c).clone(), t), d)),
        );
        differential_dataflow::consolidation::consolidate(&mut out);
        assert_eq!(out, vec![((v2.clone(), 11_000), 1), ((v2, 20_000), -1)]);
    }

    #[test]
    fn a_replacement_moves_the_end_earlier_or_later() {
        let v1 = campaign("c1", "r1", 10, 20);
        let shorter = version(&v1, v1.datetime_created + 1, "x", 16);
        let (out, _) = run_lifecycle(vec![(11_000, v1.clone()), (12_000, shorter.clone())], 0);
        assert_eq!(
            out,
            vec![
                (v1.clone(), 11_000, 1),
                (v1.clone(), 12_000, -1),
                (shorter.clone(), 12_000, 1),
                (shorter, 16_000, -1)
            ]
        );
        let longer = version(&v1, v1.datetime_created + 1, "x", 40);
        let (out, _) = run_lifecycle(vec![(11_000, v1.clone()), (12_000, longer.clone())], 0);
        assert_eq!(out[3], (longer, 40_000, -1));
        // A replacement of an early campaign before it started: the old one never appears.
        let early = version(&v1, v1.datetime_created + 1, "x", 30);
        let (out, _) = run_lifecycle(vec![(1_000, v1), (2_000, early.clone())], 0);
        assert_eq!(out, vec![(early.clone(), 10_000, 1), (early, 30_000, -1)]);
    }

    #[test]
    fn retained_is_the_oldest_message_of_every_remembered_campaign_per_partition() {
        let mut lifecycle = Lifecycle::default();
        let at = |partition, offset, campaign: Campaign| CampaignMessage {
            campaign,
            partition,
            offset,
        };
        let a = campaign("a", "r", 1, 10);
        let b = campaign("b", "r", 1, 20);
        let a2 = version(&a, a.datetime_created + 1, "newer", 15);
        let ended = campaign("old", "r", 0, 1);
        lifecycle.arrive(
            1_000,
            vec![at(0, 3, a.clone()), at(1, 7, b), at(0, 1, ended)],
            &mut |_, _, _| {},
        );
        assert_eq!(
            lifecycle.retained(),
            vec![(0, 3), (1, 7)],
            "ended: not retained"
        );
        // A newer version later in another partition: the first offsets stay.
        lifecycle.arrive(2_000, vec![at(1, 9, a2)], &mut |_, _, _| {});
        assert_eq!(lifecycle.retained(), vec![(0, 3), (1, 7)]);
        // a is forgotten when its last version ends (15 s), b at 20 s.
        lifecycle.expire(15_000);
        assert_eq!(lifecycle.retained(), vec![(1, 7)]);
        lifecycle.expire(20_000);
        assert_eq!(lifecycle.retained(), vec![]);
    }

    #[test]
    fn state_is_forgotten_once_every_version_has_ended() {
        let arrivals: Vec<_> = (0..1000)
            .map(|i| {
                (
                    1_000 + i as Time,
                    campaign(&format!("c{i}"), "r", 1, 5 + i % 7),
                )
            })
            .collect();
        let (_, remembered) = run_lifecycle(arrivals.clone(), 11_000);
        assert_eq!(
            remembered,
            1000 - (0..1000).filter(|i| 5 + i % 7 <= 11).count()
        );
        let (_, remembered) = run_lifecycle(arrivals, 12_000);
        assert_eq!(remembered, 0);
        // An older version with a later end keeps the campaign (and its winner) remembered.
        let v1 = campaign("c1", "r1", 10, 20);
        let older = version(&v1, v1.datetime_created - 1, "older", 30);
        let (_, remembered) = run_lifecycle(vec![(11_000, v1.clone()), (12_000, older)], 25_000);
        assert_eq!(remembered, 1);
        let (out, _) = run_lifecycle(vec![(11_000, v1.clone()), (26_000, v1)], 0);
        assert_eq!(out.len(), 2, "a re-delivery after the end adds nothing");
    }

    fn draft(c: &Campaign, client: &str) -> Draft {
        Draft {
            campaign: Arc::new(c.clone()),
            client_id: client.into(),
        }
    }

    /// Runs `drafts` over the given timed inputs and returns its consolidated output.
    fn run_drafts(
        campaigns: Vec<(Campaign, Time, Diff)>,
        subscriptions: Vec<(Subscription, Time, Diff)>,
    ) -> Vec<(Draft, Time, Diff)> {
        let campaigns: Vec<_> = campaigns
            .into_iter()
            .enumerate()
            .map(|(offset, (campaign, t, d))| (message(campaign, offset as i64), t, d))
            .collect();
        let captured = timely::example(move |scope| {
            let c = campaigns.into_iter().to_stream(scope).as_collection();
            let s = subscriptions.into_iter().to_stream(scope).as_collection();
            drafts(c, s).consolidate().inner.capture()
        });
        let mut out: Vec<_> = captured
            .extract()
            .into_iter()
            .flat_map(|(_, v)| v)
            .collect();
        out.sort();
        out
    }

    #[test]
    fn a_scheduled_end_leaves_the_lifecycle_only_when_the_input_reaches_it() {
        use differential_dataflow::input::Input;
        use std::sync::{Arc, Mutex};
        use timely::dataflow::operators::Inspect;
        // Valid [10 s, 20 s), arrives at 12.5 s: its end must not be emitted (and then held
        // downstream, once per draft) while the input is still before 20 s.
        let c = campaign("c1", "r1", 10, 20);
        let seen: Arc<Mutex<Vec<(Time, Diff)>>> = Arc::default();
        let out = seen.clone();
        timely::execute_directly(move |worker| {
            let mut input = worker.dataflow::<Time, _, _>(|scope| {
                let (input, messages) = scope.new_collection();
                let out = out.clone();
                campaigns_in_force(messages)
                    .inner
                    .inspect(move |(_, t, d)| out.lock().expect("lock").push((*t, *d)));
                input
            });
            input.advance_to(12_500);
            input.insert(message(c, 0));
            input.advance_to(15_000);
            input.flush();
            for _ in 0..100 {
                worker.step();
            }
            assert_eq!(*out.lock().expect("lock"), [(12_500, 1)]);
            input.advance_to(25_000);
            input.flush();
            for _ in 0..100 {
                worker.step();
            }
            assert_eq!(*out.lock().expect("lock"), [(12_500, 1), (20_000, -1)]);
        });
        assert_eq!(seen.lock().expect("lock").len(), 2);
    }

    /// A campaign field as a message might carry it: its value, another type, null, or
    /// absent (`None`); strings with escapes, quotes, NUL, non-ASCII.
    fn any_field(string: bool) -> impl proptest::strategy::Strategy<Value = Option<String>> {
        use proptest::prelude::*;
        let text = prop_oneof![
            Just(String::new()),
            "[a-z0-9-]{1,12}",
            Just(r"\u0000".to_string()),
            Just(r#"a\\\"b\n\u00e9\ud83d\ude00"#.to_string()),
            Just("Зина ☕".to_string()),
        ];
        let (strings, numbers) = if string { (8, 1) } else { (1, 8) };
        prop_oneof![
            strings => text.prop_map(|t| Some(format!("\"{t}\""))),
            numbers => crate::arbitrary::number_text().prop_map(Some),
            1 => crate::arbitrary::field_text().prop_map(Some),
            1 => Just(None),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]
        #[test]
        fn the_typed_reading_decides_as_the_field_by_field_one(
            strings in proptest::collection::vec(any_field(true), 5),
            numbers in proptest::collection::vec(any_field(false), 3),
            duplicate in proptest::option::of(0usize..8),
            shape in 0usize..4,
        ) {
            const NAMES: [&str; 8] = [
                "restaurant_id", "adv_campaign_id", "adv_campaign_content", "adv_campaign_owner",
                "adv_campaign_owner_contact", "adv_campaign_datetime_start",
                "adv_campaign_datetime_end", "datetime_created",
            ];
            let fields: Vec<Option<String>> = strings.into_iter().chain(numbers).collect();
            let mut members: Vec<String> = NAMES
                .iter()
                .zip(&fields)
                .filter_map(|(name, value)| value.as_ref().map(|v| format!("\"{name}\":{v}")))
                .collect();
            if let Some(i) = duplicate {
                members.push(format!("\"{}\":\"again\"", NAMES[i]));
            }
            members.push("\"extra\":[1,{\"x\":null}]".to_string());
            let body = members.join(",");
            let text = match shape {
                0 => format!("{{{body}}}"),
                1 => format!(" \n{{{body}}} "),
                2 => format!("[{}]", fields.iter().flatten().cloned().collect::<Vec<_>>().join(",")),
                _ => format!("{{{body}}} x"),
            };
            let bytes = Some(text.as_bytes());
            proptest::prop_assert_eq!(parse_campaign(bytes), parse_fields(bytes).and_then(validate));
        }

        #[test]
        fn any_number_gives_a_campaign_or_a_dead_letter(
            start in crate::arbitrary::number_text(),
            end in crate::arbitrary::number_text(),
            created in crate::arbitrary::field_text(),
        ) {
            let text = VALID
                .replace(r#""adv_campaign_datetime_start":10"#, &format!(r#""adv_campaign_datetime_start":{start}"#))
                .replace(r#""adv_campaign_datetime_end":20"#, &format!(r#""adv_campaign_datetime_end":{end}"#))
                .replace(r#""datetime_created":5"#, &format!(r#""datetime_created":{created}"#));
            if let Ok(campaign) = parse_campaign(Some(text.as_bytes())) {
                // Its lifecycle's times and its draft's trigger second are computed.
                let (start, end) = (campaign.adv_campaign_datetime_start, campaign.adv_campaign_datetime_end);
                proptest::prop_assert!(crate::secs_to_time(start) <= crate::secs_to_time(end));
                proptest::prop_assert!(i32::try_from(crate::time_to_secs(crate::secs_to_time(start))).is_ok());
                proptest::prop_assert!(smallest_draft(&campaign) < usize::MAX);
            }
        }
    }

    const VALID: &str = r#"{"restaurant_id":"r","adv_campaign_id":"c","adv_campaign_content":"x",
        "adv_campaign_owner":"o","adv_campaign_owner_contact":"e","adv_campaign_datetime_start":10,
        "adv_campaign_datetime_end":20,"datetime_created":5,"extra":[1,2]}"#;

    #[test]
    fn parses_a_valid_campaign_and_ignores_unknown_fields() {
        let c = parse_campaign(Some(VALID.as_bytes())).expect("valid");
        assert_eq!(&*c.restaurant_id, "r");
        assert_eq!(
            (c.adv_campaign_datetime_start, c.adv_campaign_datetime_end),
            (10, 20)
        );
    }

    #[test]
    fn a_campaign_reads_back_the_fields_it_was_made_of_and_serializes_as_the_message() {
        let fields = CampaignFields {
            restaurant_id: "r",
            adv_campaign_id: "",
            adv_campaign_content: "Скидка 10% \"на всё\"",
            adv_campaign_owner: "",
            adv_campaign_owner_contact: "o@x",
            adv_campaign_datetime_start: 1,
            adv_campaign_datetime_end: 2,
            datetime_created: 3,
        };
        let campaign = Campaign::from(fields);
        assert_eq!(campaign.fields(), fields);
        assert_eq!(campaign.adv_campaign_content(), fields.adv_campaign_content);
        assert_eq!(campaign.adv_campaign_owner_contact(), "o@x");
        let json = serde_json::to_string(&campaign).expect("json");
        assert_eq!(
            json,
            r#"{"restaurant_id":"r","adv_campaign_id":"","adv_campaign_content":"Скидка 10% \"на всё\"","adv_campaign_owner":"","adv_campaign_owner_contact":"o@x","adv_campaign_datetime_start":1,"adv_campaign_datetime_end":2,"datetime_created":3}"#
        );
        let back: Campaign = serde_json::from_str(&json).expect("read back");
        assert_eq!(back, campaign);
        assert_eq!(parse_campaign(Some(json.as_bytes())), Ok(campaign.clone()));
        // Where one text ends and the next begins is part of the campaign: "ab" + "c" is
        // not "a" + "bc".
        let split = |id, content| {
            Campaign::from(CampaignFields {
                adv_campaign_id: id,
                adv_campaign_content: content,
                ..fields
            })
        };
        assert_ne!(split("ab", "c"), split("a", "bc"));
        assert_eq!(split("a", "bc").adv_campaign_content(), "bc");
    }

    #[test]
    fn rejects_every_class_of_bad_input_with_its_reason() {
        let with = |from: &str, to: &str| VALID.replace(from, to);
        let cases: Vec<(Option<Vec<u8>>, &str)> = vec![
            (None, "tombstone"),
            (Some(vec![]), "empty_value"),
            (Some(vec![0xff, 0xfe, b'{']), "not_utf8"),
            (Some(b"{not json".to_vec()), "not_json"),
            (Some(b"[1,2,3]".to_vec()), "not_object"),
            (Some(b"\"text\"".to_vec()), "not_object"),
            (
                Some(with(r#""restaurant_id":"r","#, "").into_bytes()),
                "missing_field:restaurant_id",
            ),
            (
                Some(with(r#""adv_campaign_id":"c""#, r#""adv_campaign_id":null"#).into_bytes()),
                "null_field:adv_campaign_id",
            ),
            (
                Some(with(r#""adv_campaign_owner":"o""#, r#""adv_campaign_owner":7"#).into_bytes()),
                "wrong_type:adv_campaign_owner",
            ),
            (
                Some(with(r#""datetime_created":5"#, r#""datetime_created":"5""#).into_bytes()),
                "wrong_type:datetime_created",
            ),
            (
                Some(with(r#""datetime_created":5"#, r#""datetime_created":5.5"#).into_bytes()),
                "wrong_type:datetime_created",
            ),
            (
                Some(
                    with(
                        r#""adv_campaign_datetime_end":20"#,
                        r#""adv_campaign_datetime_end":10"#,
                    )
                    .into_bytes(),
                ),
                "end_not_after_start",
            ),
            (
                Some(
                    with(
                        r#""adv_campaign_datetime_start":10"#,
                        r#""adv_campaign_datetime_start":99999999999"#,
                    )
                    .into_bytes(),
                ),
                "out_of_range:adv_campaign_datetime_start",
            ),
            (
                Some(
                    with(
                        r#""adv_campaign_content":"x""#,
                        r#""adv_campaign_content":"x\u0000y""#,
                    )
                    .into_bytes(),
                ),
                "invalid:nul_character:adv_campaign_content",
            ),
        ];
        for (value, expected) in cases {
            let got = parse_campaign(value.as_deref()).map_err(|r| r.code());
            assert_eq!(got, Err(expected.to_string()), "value {value:?}");
        }
    }

    #[test]
    fn decode_routes_bad_records_to_dead_letters_as_data() {
        let good = RawRecord {
            partition: 0,
            offset: 1,
            key: Some(b"first_message".to_vec()),
            value: Some(VALID.as_bytes().to_vec()),
            headers: Vec::new(),
        };
        let bad = RawRecord {
            partition: 2,
            offset: 7,
            key: Some(b"k".to_vec()),
            value: Some(b"nope".to_vec()),
            headers: vec![("trace".to_string(), b"t-1".to_vec())],
        };
        let big = RawRecord {
            partition: 1,
            offset: 3,
            key: None,
            value: Some(
                VALID
                    .replace(
                        r#""adv_campaign_content":"x""#,
                        &format!(r#""adv_campaign_content":"{}""#, "x".repeat(5_000)),
                    )
                    .into_bytes(),
            ),
            headers: Vec::new(),
        };
        let valid = parse_campaign(Some(VALID.as_bytes())).expect("valid");
        let room = smallest_draft(&valid) + 36;
        assert!(room < 5_000, "the big campaign does not fit");
        let input = vec![
            (good, 5u64, 1isize),
            (bad.clone(), 6, 1),
            (big.clone(), 6, 1),
        ];
        let (campaigns, dead) = timely::example(move |scope| {
            let raw = input.into_iter().to_stream(scope).as_collection();
            let (c, d) = decode(raw, room);
            (c.inner.capture(), d.inner.capture())
        });
        let campaigns: Vec<_> = campaigns
            .extract()
            .into_iter()
            .flat_map(|(_, v)| v)
            .collect();
        let mut dead: Vec<_> = dead.extract().into_iter().flat_map(|(_, v)| v).collect();
        dead.sort_by_key(|(d, ..)| d.reason.clone());
        assert_eq!(campaigns.len(), 1);
        assert_eq!(campaigns[0].1, 5);
        assert_eq!(
            dead,
            vec![
                (
                    DeadLetter {
                        record: bad,
                        reason: "not_json".into()
                    },
                    6,
                    1
                ),
                (
                    DeadLetter {
                        record: big,
                        reason: "too_large:draft".into()
                    },
                    6,
                    1
                )
            ]
        );
    }

    #[test]
    fn a_notification_is_encoded_in_one_allocation_of_about_its_size() {
        // Empty strings and the longest integers: exactly the frame the size assumes.
        let longest = Notification {
            restaurant_id: "",
            adv_campaign_id: "",
            adv_campaign_content: "",
            adv_campaign_owner: "",
            adv_campaign_owner_contact: "",
            adv_campaign_datetime_start: i64::MIN,
            adv_campaign_datetime_end: i64::MIN,
            client_id: "",
            datetime_created: i64::MIN,
            trigger_datetime_created: i64::MIN,
        };
        let json = longest.to_json().expect("json");
        assert_eq!(json.len(), NOTIFICATION_JSON_FRAME);
        assert_eq!(json.capacity(), NOTIFICATION_JSON_FRAME);
        // A real one: the same bytes as serde_json's own, no reallocation.
        let campaign = Arc::new(parse_campaign(Some(VALID.as_bytes())).expect("valid"));
        let draft = Draft {
            campaign,
            client_id: "client-1".into(),
        };
        let notification = draft.notification(1_659_304_828_999);
        let json = notification.to_json().expect("json");
        assert_eq!(json, serde_json::to_vec(&notification).expect("json"));
        assert!(json.capacity() >= json.len() && json.capacity() < json.len() + 100);
        assert_eq!(
            draft.key(),
            format!("{}:client-1", draft.campaign.adv_campaign_id())
        );
    }

    #[test]
    fn a_campaign_fits_exactly_when_its_smallest_draft_does() {
        let valid = parse_campaign(Some(VALID.as_bytes())).expect("valid");
        // Quotes and control characters: escaped, longer than their bytes.
        let content = "\"\u{1}\\ \u{1f}".repeat(50);
        let campaign = Campaign::from(CampaignFields {
            adv_campaign_content: &content,
            ..valid.fields()
        });
        let exact = smallest_draft(&campaign);
        for room in [exact - 1, exact, exact + 1, exact * 10] {
            assert_eq!(fits(&campaign, room), exact <= room, "room {room}");
        }
    }

    #[test]
    fn the_smallest_draft_is_the_notification_without_a_client() {
        let campaign = Arc::new(parse_campaign(Some(VALID.as_bytes())).expect("valid"));
        let draft = Draft {
            campaign: campaign.clone(),
            client_id: Arc::from(""),
        };
        let value = serde_json::to_vec(&draft.notification(1_659_304_828_999)).expect("json");
        let exact = value.len() + draft.key().len();
        let bound = smallest_draft(&campaign);
        assert!(bound >= exact && bound <= exact + 1, "{bound} vs {exact}");
    }

    #[test]
    fn a_valid_campaign_is_inserted_on_arrival_and_retracted_at_its_end() {
        // Valid [10 s, 20 s); arrives at 12.5 s.
        let c = campaign("c1", "r1", 10, 20);
        let out = run_drafts(vec![(c.clone(), 12_500, 1)], vec![(sub("a", "r1"), 0, 1)]);
        assert_eq!(
            out,
            vec![(draft(&c, "a"), 12_500, 1), (draft(&c, "a"), 20_000, -1)]
        );
    }

    #[test]
    fn an_early_campaign_is_held_until_its_start() {
        let c = campaign("c1", "r1", 10, 20);
        let out = run_drafts(vec![(c.clone(), 3_000, 1)], vec![(sub("a", "r1"), 0, 1)]);
        assert_eq!(
            out,
            vec![(draft(&c, "a"), 10_000, 1), (draft(&c, "a"), 20_000, -1)]
        );
    }

    #[test]
    fn an_ended_campaign_gives_nothing() {
        let c = campaign("c1", "r1", 10, 20);
        let out = run_drafts(vec![(c, 25_000, 1)], vec![(sub("a", "r1"), 0, 1)]);
        assert_eq!(out, vec![]);
    }

    #[test]
    fn duplicate_subscriptions_and_duplicate_deliveries_count_once() {
        let c = campaign("c1", "r1", 10, 20);
        let out = run_drafts(
            vec![(c.clone(), 11_000, 1), (c.clone(), 12_000, 1)],
            vec![
                (sub("a", "r1"), 0, 1),
                (sub("a", "r1"), 0, 1),
                (sub("b", "r2"), 0, 1),
            ],
        );
        assert_eq!(
            out,
            vec![(draft(&c, "a"), 11_000, 1), (draft(&c, "a"), 20_000, -1)]
        );
    }

    #[test]
    fn a_subscription_during_validity_adds_a_draft_and_an_unsubscribe_retracts_it() {
        let c = campaign("c1", "r1", 10, 20);
        let out = run_drafts(
            vec![(c.clone(), 10_000, 1)],
            vec![(sub("a", "r1"), 14_000, 1), (sub("a", "r1"), 16_000, -1)],
        );
        assert_eq!(
            out,
            vec![(draft(&c, "a"), 14_000, 1), (draft(&c, "a"), 16_000, -1)]
        );
    }

    #[test]
    fn notification_has_the_spec_fields_in_order_and_the_trigger_second() {
        let c = campaign(
            "123e4567-e89b-12d3-a456-426614174003",
            "123e4567-e89b-12d3-a456-426614174000",
            1_659_203_516,
            2_659_207_116,
        );
        let d = draft(&c, "023e4567-e89b-12d3-a456-426614174000");
        let json = serde_json::to_string(&d.notification(1_659_304_828_999)).expect("json");
        assert_eq!(
            json,
            r#"{"restaurant_id":"123e4567-e89b-12d3-a456-426614174000","adv_campaign_id":"123e4567-e89b-12d3-a456-426614174003","adv_campaign_content":"first campaign","adv_campaign_owner":"Ivanov Ivan Ivanovich","adv_campaign_owner_contact":"iiivanov@restaurant.ru","adv_campaign_datetime_start":1659203516,"adv_campaign_datetime_end":2659207116,"client_id":"023e4567-e89b-12d3-a456-426614174000","datetime_created":1659131516,"trigger_datetime_created":1659304828}"#
        );
        assert_eq!(
            d.key(),
            "123e4567-e89b-12d3-a456-426614174003:023e4567-e89b-12d3-a456-426614174000"
        );
    }
}
