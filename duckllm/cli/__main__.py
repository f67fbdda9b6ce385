from duckllm.cli import main

main()
