-- The review queue: tickets without a confident label, least confident first.
{{ duckllm.review_queue(ref('classified_tickets'), 'confidence', threshold=0.6) }}
