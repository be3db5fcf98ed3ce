"""The pretraining data flow: sources -> sentences -> tokenizer -> formats -> masking -> batches."""
