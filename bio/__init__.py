"""mamba-suite genomics: Caduceus (Ph / PS with RCPS) and causal Mamba DNA models, character and k-mer
tokenizers, FASTA/BED/CSV/FASTQ/Genomic Benchmarks data, MLM / causal-LM / classification tasks, embedding
export, variant-effect scoring, Hugging Face checkpoint conversion and the `bench bio` benchmark."""
