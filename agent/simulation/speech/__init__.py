"""Offline speech for the local Realtime engine: eSpeak NG synthesis, PocketSphinx recognition, a scripted dialogue.

Everything here runs on bundled data (the ``espeakng-loader`` and ``pocketsphinx`` wheels); nothing is downloaded.
"""
