"""Pixels to detections: letterbox, output decoding, NMS, the detector that joins them."""
