//! The Kafka sink's decisions, apart from librdkafka, the spool and the clock.
//!
//! [`Health`] is told what happened (a record produced, acknowledged or failed, all brokers
//! down, a full producer queue, a tick) and when ([`Now`]); it answers where a record goes
//! ([`Route`], [`Fate`]), how many spooled records may be produced ([`Health::drain_budget`]) and
//! which transitions happened ([`Change`]), which the sink applies (logs them, sets the gauge,
//! purges librdkafka). It reads no clock and does no IO, so every transition is unit-tested
//! without a broker (`health/tests.rs`), as smoltcp's timers take a timestamp.
//!
//! Kafka is *healthy* while it acknowledges. It becomes unavailable when all brokers are
//! reported down, when a delivery fails retriably, or when records are in flight and nothing was
//! acknowledged for the grace. While unavailable, one spooled record at a time (a canary) is
//! produced, once per grace; its acknowledgement, or, with nothing to deliver, a metadata answer
//! newer than the outage, makes Kafka healthy again.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use std::time::{Duration, Instant};

/// Spooled records in flight at once while draining.
pub(crate) const DRAIN_IN_FLIGHT: usize = 10_000;

/// Both clocks, read once by the caller for each decision.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Now {
    /// For the grace (monotonic).
    pub at: Instant,
    /// Epoch seconds, to compare with the metadata probe's last answer.
    pub epoch: u64,
}

impl Now {
    pub fn read() -> Now {
        Now {
            at: Instant::now(),
            epoch: super::super::epoch_secs(),
        }
    }
}

/// What a Kafka error means for the record and for the producer instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ErrorClass {
    /// The broker will never take this record: too large for it (or for librdkafka).
    TooLarge,
    /// The broker will never take this record: invalid.
    Invalid,
    /// The broker refuses this producer instance (its epoch) for good: every later record fails
    /// the same way until a new instance (a new producer id) takes over. The record itself is
    /// retried.
    Fenced,
    /// Worth another try later (brokers down, timed out, purged...).
    Retriable,
}

impl ErrorClass {
    pub fn of(error: &KafkaError) -> ErrorClass {
        match error.rdkafka_error_code() {
            Some(
                RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::MessageBatchTooLarge,
            ) => ErrorClass::TooLarge,
            Some(RDKafkaErrorCode::InvalidMessage | RDKafkaErrorCode::InvalidRecord) => {
                ErrorClass::Invalid
            }
            Some(RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch) => {
                ErrorClass::Fenced
            }
            _ => ErrorClass::Retriable,
        }
    }

    /// Errors a broker will never accept however often the record is sent.
    pub fn is_permanent(self) -> bool {
        matches!(self, ErrorClass::TooLarge | ErrorClass::Invalid)
    }
}

/// Why Kafka was taken as unavailable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Why {
    BrokersDown,
    DeliveryFailed,
    NoAckWithinGrace,
}

impl Why {
    pub fn as_str(self) -> &'static str {
        match self {
            Why::BrokersDown => "all brokers down",
            Why::DeliveryFailed => "delivery failed",
            Why::NoAckWithinGrace => "no acknowledgement within --spool-grace",
        }
    }
}

/// How Kafka was found back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum How {
    /// A record (the canary, or one in flight) was acknowledged: the spool drains now.
    Acknowledged,
    /// Nothing to deliver, and the metadata probe got an answer newer than the outage.
    MetadataAnswers,
}

/// A transition, for the sink to apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// Purge what librdkafka holds (its reports bring it to the spool); new records go to the
    /// spool.
    Unavailable(Why),
    /// Kafka takes records again.
    Recovered(How),
    /// The broker fenced the producer instance: a new one takes over once nothing is in flight
    /// ([`Health::replace_producer`]).
    Fenced,
}

/// Where a new record goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    Produce,
    Spool,
}

/// What becomes of a record Kafka did not take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Refused for good: counted by kind, not retried (acknowledged in the spool if it came
    /// from there, so that it is not handed out again).
    Refused(ErrorClass),
    /// A new record: it goes to the spool.
    Spool,
    /// Already in the spool: handed out again once no spooled record is in flight
    /// ([`Health::take_rewind`]).
    Rewind,
}

/// What the sink sees of librdkafka and the spool at a tick.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Seen {
    /// Records librdkafka holds (queued or in flight).
    pub in_flight: usize,
    /// Records in the spool not yet acknowledged.
    pub spool_pending: u64,
    /// Epoch second of the metadata probe's last answer (0: never).
    pub metadata_ok_at: u64,
}

#[derive(Debug)]
pub(crate) struct Health {
    grace: Duration,
    spool_always: bool,
    /// `None` while healthy; the epoch second the outage began otherwise.
    unavailable_since: Option<u64>,
    /// Last acknowledgement, start, recovery, or canary sent: the grace runs from here.
    last_progress: Instant,
    /// Spooled records produced and not yet reported.
    drained_in_flight: usize,
    /// A spooled record was not taken: hand out the unacknowledged ones again once none is in
    /// flight.
    rewind: bool,
    /// The broker fenced the producer instance: replace it once nothing is in flight.
    fenced: bool,
}

impl Health {
    pub fn new(grace: Duration, spool_always: bool, now: Now) -> Health {
        Health {
            grace,
            spool_always,
            unavailable_since: None,
            last_progress: now.at,
            drained_in_flight: 0,
            rewind: false,
            fenced: false,
        }
    }

    pub fn healthy(&self) -> bool {
        self.unavailable_since.is_none()
    }

    /// Spooled records produced and not yet reported.
    #[cfg(test)]
    pub fn drained_in_flight(&self) -> usize {
        self.drained_in_flight
    }

    /// Where a new record goes.
    pub fn route(&self) -> Route {
        if self.spool_always || !self.healthy() {
            Route::Spool
        } else {
            Route::Produce
        }
    }

    /// A record is about to be produced while librdkafka holds `in_flight`. The grace runs only
    /// while something waits for an acknowledgement: after a quiet spell it starts now, not at
    /// the last acknowledgement before it.
    pub fn before_produce(&mut self, now: Now, in_flight: usize) {
        if self.healthy() && in_flight == 0 {
            self.last_progress = now.at;
        }
    }

    /// librdkafka took a record (`from_spool`: one handed out by the spool).
    pub fn produced(&mut self, now: Now, from_spool: bool) {
        if from_spool {
            self.drained_in_flight += 1;
            if !self.healthy() {
                // The canary gets a full grace of its own.
                self.last_progress = now.at;
            }
        }
    }

    /// librdkafka's queue is full (the sink has applied the reports received so far and
    /// checked the grace). `None`: wait and offer the record again; otherwise where it goes.
    pub fn queue_full(&mut self, from_spool: bool) -> Option<Fate> {
        if self.healthy() {
            None
        } else {
            Some(self.retry_later(from_spool))
        }
    }

    /// librdkafka would not take a record for a reason other than a full queue.
    pub fn not_produced(&mut self, error: ErrorClass, from_spool: bool) -> Fate {
        if error.is_permanent() {
            Fate::Refused(error)
        } else {
            self.retry_later(from_spool)
        }
    }

    fn retry_later(&mut self, from_spool: bool) -> Fate {
        if from_spool {
            self.rewind = true;
            Fate::Rewind
        } else {
            Fate::Spool
        }
    }

    /// Kafka acknowledged a record.
    pub fn delivered(&mut self, now: Now, from_spool: bool) -> Option<Change> {
        if from_spool {
            self.drained_in_flight = self.drained_in_flight.saturating_sub(1);
        }
        self.last_progress = now.at;
        self.recover(How::Acknowledged)
    }

    /// A delivery report says the record failed: its fate, and up to two transitions (the
    /// producer fenced, Kafka unavailable).
    pub fn failed(
        &mut self,
        now: Now,
        from_spool: bool,
        error: ErrorClass,
    ) -> (Fate, impl Iterator<Item = Change> + use<>) {
        if from_spool {
            self.drained_in_flight = self.drained_in_flight.saturating_sub(1);
        }
        let fenced = (error == ErrorClass::Fenced && !self.fenced).then(|| {
            self.fenced = true;
            Change::Fenced
        });
        if error.is_permanent() {
            return (Fate::Refused(error), [fenced, None].into_iter().flatten());
        }
        let fate = self.retry_later(from_spool);
        let unavailable = self.unavailable(now, Why::DeliveryFailed);
        (fate, [fenced, unavailable].into_iter().flatten())
    }

    /// librdkafka reports all brokers down.
    pub fn brokers_down(&mut self, now: Now) -> Option<Change> {
        self.unavailable(now, Why::BrokersDown)
    }

    /// Takes Kafka as unavailable when records have waited longer than the grace for an
    /// acknowledgement (call after the reports received so far are applied).
    pub fn check_grace(&mut self, now: Now, in_flight: usize) -> Option<Change> {
        if self.healthy()
            && in_flight > 0
            && now.at.saturating_duration_since(self.last_progress) > self.grace
        {
            self.unavailable(now, Why::NoAckWithinGrace)
        } else {
            None
        }
    }

    /// The periodic decisions: recovery without a canary (nothing to deliver, and the metadata
    /// probe answered after the outage began), else the grace.
    pub fn tick(&mut self, now: Now, seen: Seen) -> Option<Change> {
        let idle = seen.spool_pending == 0 && self.drained_in_flight == 0 && seen.in_flight == 0;
        match self.unavailable_since {
            Some(since) if !self.fenced && idle && seen.metadata_ok_at > since => {
                self.last_progress = now.at;
                self.recover(How::MetadataAnswers)
            }
            _ => self.check_grace(now, seen.in_flight),
        }
    }

    /// True once when the spool should hand out its unacknowledged records again: one was not
    /// taken, and no spooled record is in flight any more.
    pub fn take_rewind(&mut self) -> bool {
        let now = self.rewind && self.drained_in_flight == 0;
        if now {
            self.rewind = false;
        }
        now
    }

    /// True when the fenced producer instance should be replaced now (nothing in flight).
    pub fn replace_producer(&self, in_flight: usize) -> bool {
        self.fenced && in_flight == 0 && self.drained_in_flight == 0
    }

    /// A new producer instance took over.
    pub fn producer_replaced(&mut self) {
        self.fenced = false;
    }

    /// How many more spooled records may be produced now: many while Kafka is healthy, one
    /// canary a grace while it is not, none while a rewind or a producer replacement waits.
    pub fn drain_budget(&self, now: Now) -> usize {
        if self.rewind || self.fenced {
            return 0;
        }
        if self.healthy() {
            return DRAIN_IN_FLIGHT.saturating_sub(self.drained_in_flight);
        }
        if now.at.saturating_duration_since(self.last_progress) < self.grace {
            return 0;
        }
        1usize.saturating_sub(self.drained_in_flight)
    }

    /// A flush may stop waiting: everything is delivered, or Kafka is away (waiting is pointless;
    /// what librdkafka holds is purged and stays in, or goes to, the spool).
    pub fn flush_may_stop(&self, in_flight: usize, spool_pending: u64) -> bool {
        let settled = in_flight == 0 && self.drained_in_flight == 0 && spool_pending == 0;
        settled || !self.healthy()
    }

    fn unavailable(&mut self, now: Now, why: Why) -> Option<Change> {
        if !self.healthy() {
            return None;
        }
        self.unavailable_since = Some(now.epoch);
        Some(Change::Unavailable(why))
    }

    fn recover(&mut self, how: How) -> Option<Change> {
        self.unavailable_since.take()?;
        Some(Change::Recovered(how))
    }
}

#[cfg(test)]
mod tests;
