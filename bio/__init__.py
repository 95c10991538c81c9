"""mamba-suite genomics: Caduceus (Ph / PS with RCPS) and Mamba DNA models, tokenizer, FASTA/BED/CSV data, tasks."""
