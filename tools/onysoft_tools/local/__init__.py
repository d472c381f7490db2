"""The local gateway's parts (`onysoft dev`): each emulates one AWS service on a developer's machine."""
