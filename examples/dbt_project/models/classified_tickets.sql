-- Each ticket gets a label with the model's confidence in it, a cleaned customer name, and a flag
-- for the rows a person should check. Rerunning answers from duckllm's result cache.
{%- set labels = {
    'refund': 'the customer wants money back',
    'delivery': 'a parcel that is late, lost or damaged in transit',
    'account': 'logging in, passwords, profile or account settings',
    'other': 'anything else',
} %}

WITH answered AS (
    SELECT
        ticket_id,
        customer AS customer_raw,
        {{ duckllm.clean('customer') }} AS customer_cleaned,
        body,
        {{ duckllm.classify('body', labels.keys() | list, descriptions=labels) }} AS result
    FROM {{ ref('support_tickets') }}
)
SELECT
    ticket_id,
    customer_raw,
    customer_cleaned.value AS customer,
    body,
    result.label AS label,
    result.confidence AS confidence,
    {{ duckllm.abstain('result.label', 'result.confidence', 0.6) }} AS confident_label,
    {{ duckllm.needs_review('result.confidence', 0.6) }} AS needs_review
FROM answered
