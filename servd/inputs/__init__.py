"""What clients send, as values: JSON text (parse, dump, depth), declared tensors, input_schema checks. Pure."""
