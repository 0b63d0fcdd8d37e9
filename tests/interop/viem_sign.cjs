// Signs transactions through a keyguard EVM JSON-RPC listener with viem's JSON-RPC account,
// as a dapp or script would: createWalletClient({ account: <address>, transport: http(url) }).
//
// stdin: {"url": "...", "address": "0x...", "txs": [{...viem tx request, bigints as decimal strings}]}
// stdout: [{"raw": "0x...", "recovered": "0x...", "parsed": {...}} | {"error": "..."}]
// Run with NODE_PATH pointing at the node_modules that holds viem (tests/run installs it).
'use strict';
const fs = require('fs');
const { createWalletClient, http, recoverTransactionAddress, parseTransaction } = require('viem');
const { foundry } = require('viem/chains');

const BIGINTS = ['value', 'gas', 'gasPrice', 'maxFeePerGas', 'maxPriorityFeePerGas', 'maxFeePerBlobGas'];

async function main() {
  const input = JSON.parse(fs.readFileSync(0, 'utf8'));
  const client = createWalletClient({
    account: input.address,
    chain: foundry,
    transport: http(input.url, { retryCount: 0 }),
  });
  const out = [];
  for (const tx of input.txs) {
    const req = { ...tx };
    for (const k of BIGINTS) if (req[k] !== undefined) req[k] = BigInt(req[k]);
    try {
      const raw = await client.signTransaction(req);
      const recovered = await recoverTransactionAddress({ serializedTransaction: raw });
      out.push({ raw, recovered, parsed: parseTransaction(raw) });
    } catch (e) {
      out.push({ error: String(e && (e.shortMessage || e.message) || e), details: String(e && e.details || '') });
    }
  }
  process.stdout.write(JSON.stringify(out, (_, v) => (typeof v === 'bigint' ? v.toString() : v)) + '\n');
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
