"""Audio formats, codecs and resampling: everything that touches samples."""
