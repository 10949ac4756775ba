-- Attestation nonces are no longer stored when issued, sqlite. Keep in step with ../postgres/.
-- A nonce now authenticates its device, PCR selection and expiry itself (an HMAC tag made by
-- the server, see ca/src/nonce.rs), and is used up when its result is recorded: the history
-- row carries the nonce, and the nonce is unique there. Rows without a nonce (stale sweeps,
-- releases, results from before this migration) are NULL, which never conflict.

ALTER TABLE attestations ADD COLUMN nonce TEXT;
CREATE UNIQUE INDEX attestations_nonce ON attestations (nonce);

-- Nonces issued under the old scheme could be answered for five minutes; a server upgraded
-- in between refuses them (nonce_invalid) and the agent asks again.
DROP TABLE attest_nonces;
