-- A quote created already used on behalf of a caller's reference (CreateQuote use_reference):
-- one per reference, so a retried request finds the quote it made.
ALTER TABLE quotes ADD COLUMN created_for text;
CREATE UNIQUE INDEX quotes_created_for ON quotes (created_for) WHERE created_for IS NOT NULL;
