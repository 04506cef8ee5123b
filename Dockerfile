# amqphub as a container image: docker build -t amqphub .
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -o /amqphub ./cmd/amqphub

FROM gcr.io/distroless/static-debian12
COPY --from=build /amqphub /amqphub
EXPOSE 5671 443
ENTRYPOINT ["/amqphub"]
CMD ["serve"]
