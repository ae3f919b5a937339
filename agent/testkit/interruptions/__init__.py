"""The interruption bench (bench/interruptions.py): real interruptions, backchannels, coughs and echo landing while
the bot is mid-answer, against the bare relay and the agent's interruption modes, measured at the carrier and the
engine.

* :mod:`.sounds`: what the caller and the bot say (eSpeak NG speech, synthetic coughs and noise) and the event plan;
* :mod:`.engine`: the Realtime engine process (spoken replies, scripted transcripts, per-session records);
* :mod:`.caller`: the calls (a driver per call, the line's noise and echo) and the stacks they run against;
* :mod:`.analysis`: which response played when, each event's outcome, the figures per mode and the table.
"""
