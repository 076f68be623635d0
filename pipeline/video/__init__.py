"""Video building blocks: person detection, tracking and target choice, face crops, pose, frame encoders.

Each module holds one idea; pipeline/extractors/video.py wires them into the registered extractors.
Heavy libraries (cv2, torch, timm, mediapipe, ultralytics) are imported inside functions.
"""
