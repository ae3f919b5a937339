"""What a finished call means in numbers: per call at the carrier (:mod:`call`), and per hop across the carrier
and the engine (:mod:`hops`, the bench)."""
