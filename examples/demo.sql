-- duckllm demo: label support tickets and clean a messy value, with confidences.
SELECT id, text, llm_classify(text, ['refund', 'delivery', 'account', 'card_lost']) AS r
FROM read_csv('examples/tickets.csv')
ORDER BY id;

SELECT llm_clean('teh  quick brwon fox') AS cleaned;
