//! Every transition of the Kafka sink's health, without a broker: time is a parameter.

use super::*;

const GRACE: Duration = Duration::from_secs(10);

/// A clock the test moves: `t(ms)` is `ms` milliseconds after the start, epoch 1,000,000 then.
struct Clock(Instant);

impl Clock {
    fn new() -> Clock {
        Clock(Instant::now())
    }
    fn t(&self, ms: u64) -> Now {
        Now {
            at: self.0 + Duration::from_millis(ms),
            epoch: 1_000_000 + ms / 1000,
        }
    }
}

fn grace_ms() -> u64 {
    GRACE.as_millis() as u64
}

fn start(clock: &Clock) -> Health {
    Health::new(GRACE, false, clock.t(0))
}

fn changes(it: impl Iterator<Item = Change>) -> Vec<Change> {
    it.collect()
}

fn kafka(code: RDKafkaErrorCode) -> KafkaError {
    KafkaError::MessageProduction(code)
}

#[test]
fn errors_are_classified_once() {
    use RDKafkaErrorCode as C;
    for code in [
        C::MessageSizeTooLarge,
        C::InvalidMessageSize,
        C::MessageBatchTooLarge,
    ] {
        assert_eq!(
            ErrorClass::of(&kafka(code)),
            ErrorClass::TooLarge,
            "{code:?}"
        );
    }
    for code in [C::InvalidMessage, C::InvalidRecord] {
        assert_eq!(
            ErrorClass::of(&kafka(code)),
            ErrorClass::Invalid,
            "{code:?}"
        );
    }
    for code in [C::ProducerFenced, C::InvalidProducerEpoch] {
        assert_eq!(ErrorClass::of(&kafka(code)), ErrorClass::Fenced, "{code:?}");
    }
    for code in [
        C::AllBrokersDown,
        C::MessageTimedOut,
        C::PurgeQueue,
        C::PurgeInflight,
        C::NotEnoughReplicas,
        C::QueueFull,
    ] {
        assert_eq!(
            ErrorClass::of(&kafka(code)),
            ErrorClass::Retriable,
            "{code:?}"
        );
    }
    assert_eq!(
        ErrorClass::of(&KafkaError::Canceled),
        ErrorClass::Retriable,
        "an error without a code is worth a retry"
    );
    assert!(ErrorClass::TooLarge.is_permanent() && ErrorClass::Invalid.is_permanent());
    assert!(!ErrorClass::Fenced.is_permanent() && !ErrorClass::Retriable.is_permanent());
}

#[test]
fn records_are_produced_while_healthy_and_spooled_with_spool_always() {
    let clock = Clock::new();
    let h = start(&clock);
    assert!(h.healthy());
    assert_eq!(h.route(), Route::Produce);
    assert_eq!(h.drain_budget(clock.t(0)), DRAIN_IN_FLIGHT);
    let always = Health::new(GRACE, true, clock.t(0));
    assert_eq!(
        always.route(),
        Route::Spool,
        "--spool-always spools every record"
    );
    assert!(always.healthy());
}

#[test]
fn outage_at_start_spools_then_one_canary_a_grace_recovers() {
    let clock = Clock::new();
    let mut h = start(&clock);
    // librdkafka reports all brokers down before anything was acknowledged.
    assert_eq!(
        h.brokers_down(clock.t(100)),
        Some(Change::Unavailable(Why::BrokersDown))
    );
    assert_eq!(
        h.brokers_down(clock.t(200)),
        None,
        "one transition, not one a report"
    );
    assert!(!h.healthy());
    assert_eq!(h.route(), Route::Spool);
    // No canary before a grace has passed since the last progress (the start).
    assert_eq!(h.drain_budget(clock.t(grace_ms() - 1)), 0);
    let canary_at = grace_ms() + 1;
    assert_eq!(h.drain_budget(clock.t(canary_at)), 1, "one canary");
    h.produced(clock.t(canary_at), true);
    assert_eq!(h.drain_budget(clock.t(canary_at)), 0, "only one in flight");
    // The canary fails: it is handed out again, and the next one waits a full grace.
    let (fate, c) = h.failed(clock.t(canary_at + 50), true, ErrorClass::Retriable);
    assert_eq!(fate, Fate::Rewind);
    assert_eq!(changes(c), [], "already unavailable");
    assert!(h.take_rewind(), "nothing in flight: rewind now");
    assert!(!h.take_rewind(), "once");
    assert_eq!(h.drain_budget(clock.t(canary_at + grace_ms() - 1)), 0);
    let second = canary_at + grace_ms() + 1;
    assert_eq!(h.drain_budget(clock.t(second)), 1);
    h.produced(clock.t(second), true);
    // Its acknowledgement makes Kafka healthy, and the spool drains at full width.
    assert_eq!(
        h.delivered(clock.t(second + 5), true),
        Some(Change::Recovered(How::Acknowledged))
    );
    assert!(h.healthy());
    assert_eq!(h.route(), Route::Produce);
    assert_eq!(h.drain_budget(clock.t(second + 5)), DRAIN_IN_FLIGHT);
}

#[test]
fn outage_mid_stream_spools_new_records_and_rewinds_spooled_ones() {
    let clock = Clock::new();
    let mut h = start(&clock);
    for i in 0..3 {
        h.before_produce(clock.t(i), i as usize);
        h.produced(clock.t(i), false);
    }
    assert_eq!(
        h.delivered(clock.t(10), false),
        None,
        "healthy stays healthy"
    );
    // Two spooled records in flight too (a drain was running).
    h.produced(clock.t(11), true);
    h.produced(clock.t(11), true);
    assert_eq!(h.drained_in_flight(), 2);
    // A new record fails retriably: it goes to the spool, Kafka is unavailable.
    let (fate, c) = h.failed(clock.t(20), false, ErrorClass::Retriable);
    assert_eq!(fate, Fate::Spool);
    assert_eq!(changes(c), [Change::Unavailable(Why::DeliveryFailed)]);
    // The others come back purged: new ones to the spool, spooled ones rewound once none of
    // them is in flight any more.
    let (fate, c) = h.failed(clock.t(21), false, ErrorClass::Retriable);
    assert_eq!((fate, changes(c)), (Fate::Spool, vec![]));
    let (fate, _) = h.failed(clock.t(22), true, ErrorClass::Retriable);
    assert_eq!(fate, Fate::Rewind);
    assert!(!h.take_rewind(), "a spooled record is still in flight");
    assert_eq!(
        h.drain_budget(clock.t(grace_ms() * 5)),
        0,
        "no canary before the rewind"
    );
    let (fate, _) = h.failed(clock.t(23), true, ErrorClass::Retriable);
    assert_eq!(fate, Fate::Rewind);
    assert_eq!(h.drained_in_flight(), 0);
    assert!(h.take_rewind());
    assert!(!h.take_rewind());
    assert_eq!(h.route(), Route::Spool);
}

#[test]
fn a_stalled_broker_is_taken_as_unavailable_after_the_grace() {
    let clock = Clock::new();
    let mut h = start(&clock);
    h.before_produce(clock.t(1000), 0);
    h.produced(clock.t(1000), false);
    // Records in flight, no acknowledgement: unavailable only once the grace is over.
    assert_eq!(h.check_grace(clock.t(1000 + grace_ms()), 7), None);
    assert_eq!(
        h.tick(
            clock.t(1000 + grace_ms()),
            Seen {
                in_flight: 7,
                ..Seen::default()
            }
        ),
        None
    );
    // A full queue while healthy means wait (backpressure, not loss).
    assert_eq!(h.queue_full(false), None);
    assert_eq!(
        h.tick(
            clock.t(1001 + grace_ms()),
            Seen {
                in_flight: 7,
                ..Seen::default()
            }
        ),
        Some(Change::Unavailable(Why::NoAckWithinGrace))
    );
    // Now a full queue sends the record to the spool (or back to it).
    assert_eq!(h.queue_full(false), Some(Fate::Spool));
    assert_eq!(h.queue_full(true), Some(Fate::Rewind));
    assert!(h.take_rewind());
}

#[test]
fn nothing_in_flight_is_no_outage_and_a_quiet_spell_restarts_the_grace() {
    let clock = Clock::new();
    let mut h = start(&clock);
    // Idle for many graces: nothing waits for an acknowledgement.
    assert_eq!(h.check_grace(clock.t(grace_ms() * 10), 0), None);
    // A record after the quiet spell: the grace starts at it, not at the start.
    let t1 = grace_ms() * 10;
    h.before_produce(clock.t(t1), 0);
    h.produced(clock.t(t1), false);
    assert_eq!(h.check_grace(clock.t(t1 + 1), 1), None);
    assert_eq!(h.check_grace(clock.t(t1 + grace_ms()), 1), None);
    // With records already in flight, a new one does not move the grace.
    h.before_produce(clock.t(t1 + grace_ms()), 1);
    assert_eq!(
        h.check_grace(clock.t(t1 + grace_ms() + 1), 2),
        Some(Change::Unavailable(Why::NoAckWithinGrace))
    );
}

#[test]
fn an_acknowledgement_moves_the_grace() {
    let clock = Clock::new();
    let mut h = start(&clock);
    h.before_produce(clock.t(0), 0);
    assert_eq!(h.delivered(clock.t(grace_ms() - 1), false), None);
    assert_eq!(h.check_grace(clock.t(grace_ms() * 2 - 2), 1), None);
    assert!(h.check_grace(clock.t(grace_ms() * 2), 1).is_some());
}

#[test]
fn recovery_drains_the_spool_at_full_width() {
    let clock = Clock::new();
    let mut h = start(&clock);
    assert!(h.brokers_down(clock.t(0)).is_some());
    let t = grace_ms() + 1;
    h.produced(clock.t(t), true);
    assert_eq!(
        h.delivered(clock.t(t + 1), true),
        Some(Change::Recovered(How::Acknowledged))
    );
    // The spool drains: up to DRAIN_IN_FLIGHT spooled records at once.
    for _ in 0..DRAIN_IN_FLIGHT {
        assert!(h.drain_budget(clock.t(t + 2)) > 0);
        h.produced(clock.t(t + 2), true);
    }
    assert_eq!(h.drain_budget(clock.t(t + 2)), 0, "bounded in flight");
    assert!(!h.flush_may_stop(0, 0), "spooled records still in flight");
    assert_eq!(h.delivered(clock.t(t + 3), true), None);
    assert_eq!(h.drain_budget(clock.t(t + 3)), 1);
    for _ in 1..DRAIN_IN_FLIGHT {
        h.delivered(clock.t(t + 4), true);
    }
    assert_eq!(h.drained_in_flight(), 0);
    assert!(h.flush_may_stop(0, 0));
    assert!(!h.flush_may_stop(0, 5), "records still in the spool");
    assert!(!h.flush_may_stop(3, 0), "records still in librdkafka");
}

#[test]
fn with_nothing_to_deliver_a_metadata_answer_after_the_outage_recovers() {
    let clock = Clock::new();
    let mut h = start(&clock);
    let outage = clock.t(5000); // epoch 1,000,005
    assert!(h.brokers_down(outage).is_some());
    let idle = |metadata_ok_at| Seen {
        in_flight: 0,
        spool_pending: 0,
        metadata_ok_at,
    };
    // An answer from before (or the same second as) the outage proves nothing.
    assert_eq!(h.tick(clock.t(6000), idle(outage.epoch - 1)), None);
    assert_eq!(h.tick(clock.t(6000), idle(outage.epoch)), None);
    // Records waiting: the canary decides, not the metadata.
    let waiting = Seen {
        spool_pending: 1,
        ..idle(outage.epoch + 1)
    };
    assert_eq!(h.tick(clock.t(7000), waiting), None);
    assert!(!h.healthy());
    assert_eq!(
        h.tick(clock.t(7000), idle(outage.epoch + 1)),
        Some(Change::Recovered(How::MetadataAnswers))
    );
    assert!(h.healthy());
    // The grace restarts at the recovery.
    assert_eq!(h.check_grace(clock.t(7000 + grace_ms()), 1), None);
}

#[test]
fn a_fenced_producer_is_replaced_once_nothing_is_in_flight() {
    let clock = Clock::new();
    let mut h = start(&clock);
    h.produced(clock.t(1), true);
    h.produced(clock.t(1), true);
    let (fate, c) = h.failed(clock.t(2), true, ErrorClass::Fenced);
    assert_eq!(
        fate,
        Fate::Rewind,
        "the record is retried by the next instance"
    );
    assert_eq!(
        changes(c),
        [Change::Fenced, Change::Unavailable(Why::DeliveryFailed)]
    );
    assert_eq!(
        h.drain_budget(clock.t(grace_ms() * 3)),
        0,
        "no canary while fenced"
    );
    assert!(
        !h.replace_producer(0),
        "a spooled record is still in flight"
    );
    let (_, c) = h.failed(clock.t(3), true, ErrorClass::Fenced);
    assert_eq!(changes(c), [], "fenced is told once");
    assert!(!h.replace_producer(4), "librdkafka still holds records");
    assert!(h.replace_producer(0));
    // Fenced and idle: the metadata does not count as recovery until the new instance is in.
    let idle = Seen {
        metadata_ok_at: u64::MAX,
        ..Seen::default()
    };
    assert_eq!(h.tick(clock.t(4), idle), None);
    h.producer_replaced();
    assert!(!h.replace_producer(0));
    assert!(h.take_rewind());
    // The new instance gets a canary once a grace has passed since the last progress.
    assert_eq!(h.drain_budget(clock.t(grace_ms() + 2)), 1);
}

#[test]
fn oversized_and_invalid_records_fail_alone() {
    let clock = Clock::new();
    let mut h = start(&clock);
    let (fate, c) = h.failed(clock.t(1), true, ErrorClass::TooLarge);
    assert_eq!(fate, Fate::Refused(ErrorClass::TooLarge));
    assert_eq!(changes(c), []);
    let (fate, c) = h.failed(clock.t(1), false, ErrorClass::Invalid);
    assert_eq!(fate, Fate::Refused(ErrorClass::Invalid));
    assert_eq!(changes(c), []);
    assert!(h.healthy(), "a refused record says nothing about Kafka");
    assert!(
        !h.take_rewind(),
        "a refused spooled record is acknowledged, not handed out again"
    );
    assert_eq!(h.drained_in_flight(), 0);
    // Refused when handed to librdkafka: the same, and no rewind.
    assert_eq!(
        h.not_produced(ErrorClass::TooLarge, true),
        Fate::Refused(ErrorClass::TooLarge)
    );
    assert!(!h.take_rewind());
    // Any other refusal there: kept (a new record spooled, a spooled one rewound).
    assert_eq!(h.not_produced(ErrorClass::Retriable, false), Fate::Spool);
    assert_eq!(h.not_produced(ErrorClass::Retriable, true), Fate::Rewind);
    assert!(h.take_rewind());
}

#[test]
fn shutdown_during_an_outage_stops_waiting() {
    let clock = Clock::new();
    let mut h = start(&clock);
    h.before_produce(clock.t(0), 0);
    h.produced(clock.t(0), false);
    assert!(
        !h.flush_may_stop(1, 0),
        "healthy: wait for the acknowledgement"
    );
    assert!(h.brokers_down(clock.t(10)).is_some());
    // Kafka away: waiting is pointless, whatever librdkafka holds or the spool keeps.
    assert!(h.flush_may_stop(1, 100));
    assert!(h.flush_may_stop(0, 100));
}

#[test]
fn reports_beyond_what_was_counted_do_not_underflow() {
    let clock = Clock::new();
    let mut h = start(&clock);
    // Reports of spooled records produced by an earlier instance, after a replacement.
    assert_eq!(h.delivered(clock.t(1), true), None);
    let (fate, _) = h.failed(clock.t(2), true, ErrorClass::Retriable);
    assert_eq!(fate, Fate::Rewind);
    assert_eq!(h.drained_in_flight(), 0);
    assert!(h.take_rewind());
}
