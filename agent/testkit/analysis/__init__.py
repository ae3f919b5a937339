"""What a finished call means in numbers. Each figure is defined once (:mod:`measures`); the per-call report at
the carrier (:mod:`call`, shown by :mod:`timeline`) and the per-hop bench figures across the carrier and the
engine (:mod:`hops`, judged by :mod:`health`) are both computed with it."""
